"""The results store of one fit: images, parameters, loss history and checkpoints.

Layout (Zarr v3; a local path, an fsspec URL or a Store, see `scaling.data._zarr`):

    zarr.json   attributes: kind = "ami-results", schema_version,
                latest = group of the latest save (or null),
                checkpoints = [[step, group], ...] ascending
    saves/<step>-<id>/          attributes: step, epochs (image order), exposure_names
        images/<epoch>/image    (n, n) float64, attributes = its `EpochImage` geometry
        shared/, exposure/      parameter trees (see below)
        loss                    (nsteps,) float64 loss history
    checkpoints/<step>-<id>/<tree>/   one parameter or optimiser-state tree each

A tree (any JAX pytree of arrays: parameters, optax states) is stored as one array per
leaf, named 00000, 00001, … in `jax.tree` order, with the leaves' key paths as attributes.
It is read back into the structure of a template (`like`), or, for nested dicts, without
one. Every save and checkpoint is written in a new group and becomes visible when the root
document (one write) points to it, so a crash leaves the previous one readable.
"""

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
import zarr
from numpy.typing import ArrayLike, NDArray

from scaling.data._zarr import Location, StoreError, as_store, describe, local_path, open_root

KIND = "ami-results"
SCHEMA_VERSION = 1

PyTree = Any


@dataclass(frozen=True, eq=False)
class EpochImage:
    """One epoch's image and where it lies on the sky.

    Attributes:
        name: epoch name.
        data: (n, n) image; rows are +y, columns +x.
        pixel_scale: arcsec per pixel.
        orientation: counter-clockwise angle from the image's +y axis to north, degrees:
            0 for north up, east left (the model's sky axes); an image in the detector
            axes of an exposure has its roll angle.
        target: target name.
        mjd: time of the epoch, MJD, or None.
        ra, dec: sky position of the image centre, degrees, or None if unknown.
        unit: what a pixel value means (e.g. 'fraction of total flux').
    """

    name: str
    data: NDArray[np.float64]
    pixel_scale: float
    orientation: float = 0.0
    target: str = ""
    mjd: float | None = None
    ra: float | None = None
    dec: float | None = None
    unit: str = ""


@dataclass(frozen=True, eq=False)
class Snapshot:
    """A save: step, epoch images, shared and per-exposure parameters, loss history.

    `exposure` maps a parameter name to an array whose leading axis follows
    `exposure_names`; `loss` is (nsteps,).
    """

    step: int
    images: list[EpochImage]
    shared: PyTree
    exposure: dict[str, NDArray]
    exposure_names: list[str]
    loss: NDArray[np.float64]


class Results:
    """A results store, opened for reading or writing."""

    def __init__(self, root: zarr.Group, where: str):
        self._root = root
        self.where = where

    @classmethod
    def create(cls, location: Location, overwrite: bool = False) -> "Results":
        """A new, empty results store (an existing one is replaced only if `overwrite`).

        Raises:
            StoreError: something is already there and `overwrite` is false.
        """
        where = describe(location)
        path = local_path(location)
        if path is not None and path.is_file():
            raise StoreError(f"{where}: is a file, not a results store")
        attributes = {"kind": KIND, "schema_version": SCHEMA_VERSION}
        attributes |= {"latest": None, "checkpoints": []}
        store = as_store(location, read_only=False)
        mode = "w" if overwrite else "w-"
        try:
            root = zarr.open_group(store, mode=mode, zarr_format=3, attributes=attributes)
        except (FileExistsError, zarr.errors.ContainsArrayError, zarr.errors.ContainsGroupError):
            raise StoreError(f"{where}: already exists (pass overwrite=True to replace)") from None
        return cls(root, where)

    @classmethod
    def open(cls, location: Location, writable: bool = False) -> "Results":
        """An existing results store.

        Raises:
            StoreError: nothing there, another kind of store, or another schema version.
        """
        where = describe(location)
        store = as_store(location, read_only=not writable)
        mode = "r+" if writable else "r"
        return cls(
            open_root(store, KIND, SCHEMA_VERSION, where, mode=mode, consolidated=False), where
        )

    # --- saves ---------------------------------------------------------------------------

    def save(
        self,
        step: int,
        *,
        images: Sequence[EpochImage],
        shared: PyTree,
        exposure: Mapping[str, ArrayLike],
        exposure_names: Sequence[str],
        loss: ArrayLike,
    ) -> None:
        """Write a snapshot; it replaces the previous one in a single root write."""
        exposure = {k: np.asarray(v) for k, v in exposure.items()}
        for name, value in exposure.items():
            if value.shape[:1] != (len(exposure_names),):
                raise ValueError(
                    f"exposure parameter {name}: expected a leading axis of "
                    f"{len(exposure_names)} exposures, got shape {value.shape}"
                )
        epochs = [image.name for image in images]
        if len(set(epochs)) != len(epochs):
            raise ValueError(f"epoch images: names repeat: {epochs}")
        attributes = {"step": int(step), "epochs": epochs, "exposure_names": list(exposure_names)}
        group = self._root.create_group(
            f"saves/{step:09d}-{uuid.uuid4().hex[:8]}", attributes=attributes
        )
        for image in images:
            _write_image(group.create_group(f"images/{image.name}"), image)
        write_tree(group.create_group("shared"), shared)
        write_tree(group.create_group("exposure"), exposure)
        _write_array(group, "loss", np.asarray(loss, dtype=np.float64))
        self._root.attrs["latest"] = group.path
        _delete_others(self._root["saves"], {group.path})

    def load(self) -> Snapshot:
        """The latest snapshot.

        Raises:
            StoreError: nothing was saved yet.
        """
        latest = self._root.attrs["latest"]
        if latest is None:
            raise StoreError(f"{self.where}: attribute latest: no results saved yet")
        group = self._root[latest]
        images = [_read_image(n, group[f"images/{n}"]) for n in group.attrs["epochs"]]
        return Snapshot(
            step=group.attrs["step"],
            images=images,
            shared=read_tree(group["shared"]),
            exposure=read_tree(group["exposure"]),
            exposure_names=list(group.attrs["exposure_names"]),
            loss=np.asarray(group["loss"][...]),
        )

    # --- checkpoints ---------------------------------------------------------------------

    @property
    def checkpoint_steps(self) -> list[int]:
        """Steps with a complete checkpoint, ascending."""
        return [step for step, _ in self._root.attrs["checkpoints"]]

    def write_checkpoint(
        self, step: int, trees: Mapping[str, PyTree], keep: int | None = None
    ) -> None:
        """Checkpoint `trees` (e.g. {'params': …, 'opt_state': …}) at `step`.

        It replaces any checkpoint of the same step; with `keep` (>= 1), only the newest
        `keep` checkpoints remain. The root lists it only once every tree is written.
        """
        if keep is not None and keep < 1:
            raise ValueError(f"keep: expected at least 1 checkpoint, got {keep}")
        group = self._root.create_group(
            f"checkpoints/{step:09d}-{uuid.uuid4().hex[:8]}", attributes={"step": int(step)}
        )
        for name, tree in trees.items():
            write_tree(group.create_group(name), tree)
        old = self._root.attrs["checkpoints"]
        entries = sorted([*(e for e in old if e[0] != step), [int(step), group.path]])
        kept = entries[-keep:] if keep else entries
        self._root.attrs["checkpoints"] = kept
        _delete_others(self._root["checkpoints"], {path for _, path in kept})

    def read_checkpoint(
        self, like: Mapping[str, PyTree | None], step: int | None = None
    ) -> tuple[int, dict[str, PyTree]]:
        """(step, {name: tree}) of the checkpoint at `step` (default: the latest).

        `like` names the trees to read, each with a template of the same structure, or
        None for a tree of nested dicts. Leaves come back as NumPy arrays.

        Raises:
            StoreError: no such checkpoint, or a tree that does not match its template.
        """
        entries = dict(self._root.attrs["checkpoints"])
        if not entries:
            raise StoreError(f"{self.where}: attribute checkpoints: no checkpoint yet")
        step = max(entries) if step is None else step
        if step not in entries:
            raise StoreError(
                f"{self.where}: no checkpoint at step {step}; steps: {sorted(entries)}"
            )
        group = self._root[entries[step]]
        return step, {name: read_tree(group[name], template) for name, template in like.items()}


def write_tree(group: zarr.Group, tree: PyTree) -> None:
    """Store every leaf of `tree` in `group` (one array each), with its key path."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    for i, (_, leaf) in enumerate(leaves):
        _write_array(group, f"{i:05d}", np.asarray(leaf))
    paths = [path for path, _ in leaves]
    only_dicts = all(
        isinstance(k, jax.tree_util.DictKey) and isinstance(k.key, str) for p in paths for k in p
    )
    dict_keys = [[k.key for k in p] for p in paths] if only_dicts else None
    group.attrs.update({"paths": [jax.tree_util.keystr(p) for p in paths], "dict_keys": dict_keys})


def read_tree(group: zarr.Group, like: PyTree | None = None) -> PyTree:
    """A tree written by `write_tree`, in the structure of `like` (or as nested dicts).

    Raises:
        StoreError: the stored key paths, shapes or dtypes differ from `like`'s, or no
            template was given for a tree that is not nested dicts.
    """
    paths = group.attrs["paths"]
    leaves = [np.asarray(group[f"{i:05d}"][...]) for i in range(len(paths))]
    if like is None:
        dict_keys = group.attrs["dict_keys"]
        if dict_keys is None:
            raise StoreError(f"{group.path}: not a tree of dicts; give a template to read it")
        tree: dict = {}
        for keys, leaf in zip(dict_keys, leaves, strict=True):
            node = tree
            for key in keys[:-1]:
                node = node.setdefault(key, {})
            node[keys[-1]] = leaf
        return tree
    template, treedef = jax.tree_util.tree_flatten_with_path(like)
    expected = [jax.tree_util.keystr(p) for p, _ in template]
    if expected != paths:
        raise StoreError(
            f"{group.path}: stored leaves {sorted(set(paths) - set(expected))} and template "
            f"leaves {sorted(set(expected) - set(paths))} differ"
        )
    for path, (_, want), got in zip(paths, template, leaves, strict=True):
        want = np.asarray(want)
        if (want.shape, want.dtype) != (got.shape, got.dtype):
            raise StoreError(
                f"{group.path}: leaf {path}: template has {want.dtype}{list(want.shape)}, "
                f"the store {got.dtype}{list(got.shape)}"
            )
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _delete_others(parent: zarr.Group, keep: set[str]) -> None:
    """Delete the groups of `parent` whose paths are not in `keep` (replaced or dropped
    saves and checkpoints, and any left half-written by a crash)."""
    for name in list(parent.group_keys()):
        if f"{parent.path}/{name}" not in keep:
            del parent[name]


def _write_array(group: zarr.Group, name: str, data: np.ndarray) -> None:
    """`data` as one chunk; numbers and booleans only, so nothing is ever pickled."""
    if data.dtype.kind not in "biufc":
        raise TypeError(f"{group.path}/{name}: expected numbers or booleans, got {data.dtype}")
    group.create_array(name, data=data, chunks=tuple(max(n, 1) for n in data.shape))


def _write_image(group: zarr.Group, image: EpochImage) -> None:
    data = np.asarray(image.data, dtype=np.float64)
    if data.ndim != 2:
        raise ValueError(f"epoch image {image.name}: expected 2 dimensions, got {data.shape}")
    _write_array(group, "image", data)
    geometry = {
        "pixel_scale": float(image.pixel_scale),
        "orientation": float(image.orientation),
        "target": image.target,
        "mjd": image.mjd,
        "ra": image.ra,
        "dec": image.dec,
        "unit": image.unit,
    }
    group.attrs.update(geometry)


def _read_image(name: str, group: zarr.Group) -> EpochImage:
    return EpochImage(name=name, data=np.asarray(group["image"][...]), **group.attrs.asdict())
