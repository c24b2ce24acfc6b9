"""The campaign store: every exposure of a campaign in one Zarr v3 hierarchy.

Layout (written by `scaling.data.ingest`):

    zarr.json                    root group; consolidated metadata of everything below
        attributes: kind = "ami-campaign", schema_version, exposures (the committed
        names), epochs ({epoch: [names]}), epoch_rule ({"window_hours": h} or
        {"table": true})
    exposures/<name>/            one group per exposure, attributes = its metadata,
                                 with kind ("slopes" or "rate") and gain (e-/DN)
        slope     float64 (ngroups-1, ny, nx)  e-/group, one Zstd-compressed chunk;
                          kind "rate": (1, ny, nx) count rate, e-/s
        variance  float64 (ngroups-1, ny, nx)  e-²; kind "rate": (1, ny, nx) (e-/s)²
        badpix    bool    (ny, nx)             True = bad
      and, for slopes made from ramps (`scaling.data.ramps`) only:
        slope_mask   bool  (ngroups-1, ny, nx)  True = slope masked (its value NaN)
        counts       int32 (ngroups-1, ny, nx)  integrations averaged into each slope
        pair_counts  int32 (ngroups-2, ny, nx)  integrations that kept slopes k and k+1

Only the names listed in the root's `exposures` attribute exist for readers, so a group
written by an interrupted ingest is invisible. Opening reads the root document alone;
reading exposures reads one chunk per array and nothing else.
"""

import dataclasses
import hashlib
import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zarr

from scaling.data._zarr import Location, StoreError, as_store, describe, local_path, open_root
from scaling.data.fitsio import META_FIELDS, ExposureMeta, ExposureRecord

KIND = "ami-campaign"
SCHEMA_VERSION = 3
"""Bumped whenever the layout above changes. 2: exposures of kind "rate" (JWST rate
products) beside "slopes"; each records its kind and gain. 3: slopes made from ramps
carry `SLOPE_MASK_ARRAYS`."""

READABLE_VERSIONS = (2, 3)
"""Schema versions this code reads (a version-2 store is a version-3 store without ramps;
an ingest into it writes version 3); others are refused."""

ARRAYS = ("slope", "variance", "badpix")
"""The arrays of each exposure group; their names are the `ExposureRecord` fields."""

SLOPE_MASK_ARRAYS = ("slope_mask", "counts", "pair_counts")
"""The arrays only exposures made from ramps have (`ExposureRecord` fields too)."""


ROLES = ("science", "calibrator")


def previous_store(path: Path) -> Path:
    """Where an ingest parks the old store of `path` while swapping in the new one."""
    return path.with_name(f".{path.name}.previous")


@dataclass(frozen=True)
class ExposureInfo(ExposureMeta):
    """What the store knows of an exposure without reading its arrays: its header
    (`ExposureMeta`: expmid MJD, roll degrees, group_time seconds, dither arcsec) and

    Attributes:
        name: exposure id, e.g. 'jw01373001001_01101_00001_nis'.
        epoch: its epoch for a science exposure, None for a calibrator.
        role: 'science' or 'calibrator' (IS_PSF).
        shape: (ngroups-1, ny, nx) of its slopes.
        source_file: file name it was ingested from; sha256: that file's hex digest.
        target_ra, target_dec: target coordinates from the header, degrees, or None.
        kind: 'slopes' (slopes in e-/group) or 'rate' (a count rate in e-/s, shape
            (1, ny, nx)); gain: e-/DN applied to a rate product, None for slopes.
    """

    name: str
    epoch: str | None
    role: str
    shape: tuple[int, int, int]
    source_file: str
    sha256: str
    target_ra: float | None
    target_dec: float | None
    kind: str
    gain: float | None

    @property
    def cost(self) -> int:
        """Work to model the exposure: pixels × groups."""
        return self.shape[1] * self.shape[2] * self.ngroups


@dataclass(frozen=True)
class Shard:
    """Exposures given to one worker: whole epochs plus calibrators.

    Attributes:
        index: shard number in [0, n).
        exposures: names, in campaign order (mid-time, then name).
        epochs: epochs whose exposures are all here.
        cost: summed `ExposureInfo.cost`.
    """

    index: int
    exposures: tuple[str, ...]
    epochs: tuple[str, ...]
    cost: int

    @property
    def name(self) -> str:
        """'shard_003' for index 3: the name of its part of a checkpoint."""
        return f"shard_{self.index:03d}"


class Campaign:
    """Read access to a campaign store (or a selection of its exposures)."""

    def __init__(self, root: zarr.Group, exposures: Iterable[ExposureInfo], where: str):
        self._root = root
        self.exposures = tuple(sorted(exposures, key=lambda e: (e.expmid, e.name)))
        """The exposures, in campaign order (mid-time, then name)."""
        self.where = where
        self._by_name = {e.name: e for e in self.exposures}

    @classmethod
    def open(cls, location: Location) -> "Campaign":
        """Open a campaign store read-only (one read: the consolidated root document).

        If an ingest was killed while swapping a local store, the previous store is read.

        Raises:
            StoreError: nothing there, not a campaign store, or another schema version.
        """
        path = local_path(location)
        where = describe(location)
        if path is not None and path.is_file():
            raise StoreError(f"{where}: is a file, not a campaign store")
        if path is not None and not path.exists():
            if not previous_store(path).is_dir():
                raise StoreError(f"{where}: no campaign store there")
            location = previous_store(path)
        root = open_root(
            as_store(location, read_only=True), KIND, READABLE_VERSIONS, where, consolidated=True
        )
        return cls(root, _infos(root), where)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.exposures)

    @property
    def epochs(self) -> dict[str, tuple[str, ...]]:
        """Epoch name → its exposures in this selection, in campaign order."""
        epochs: dict[str, tuple[str, ...]] = {}
        for e in self.exposures:
            if e.epoch is not None:
                epochs[e.epoch] = (*epochs.get(e.epoch, ()), e.name)
        return dict(sorted(epochs.items()))

    @property
    def digest(self) -> str:
        """SHA-256 over the exposures' names and source-file digests, in campaign order:
        the identity of the data a fit saw."""
        h = hashlib.sha256()
        for e in self.exposures:
            h.update(f"{e.name} {e.sha256}\n".encode())
        return h.hexdigest()

    @property
    def epoch_rule(self) -> dict[str, Any]:
        """How the epochs were made: {'window_hours': h} or {'table': True}."""
        return dict(self._root.attrs["epoch_rule"])

    def info(self, name: str) -> ExposureInfo:
        """Metadata of exposure `name` (KeyError naming it if absent)."""
        if name not in self._by_name:
            raise KeyError(f"{self.where}: no exposure {name!r} in this selection")
        return self._by_name[name]

    def select(
        self,
        *,
        target: str | Iterable[str] | None = None,
        filter: str | Iterable[str] | None = None,
        epoch: str | Iterable[str] | None = None,
        role: str | Iterable[str] | None = None,
        observation: int | Iterable[int] | None = None,
    ) -> "Campaign":
        """The exposures matching every given criterion (each a value or a collection;
        `observation`: the program's observation numbers, e.g. 12)."""
        given = {
            "target": target,
            "filter": filter,
            "epoch": epoch,
            "role": role,
            "observation": observation,
        }
        wanted = {
            k: {v} if isinstance(v, str | int) else set(v)
            for k, v in given.items()
            if v is not None
        }
        unknown = wanted.get("role", set()) - set(ROLES)
        if unknown:
            raise ValueError(f"role: expected one of {ROLES}, got {sorted(unknown)}")
        kept = [e for e in self.exposures if all(getattr(e, k) in v for k, v in wanted.items())]
        return Campaign(self._root, kept, self.where)

    def partition(self, n: int) -> list[Shard]:
        """Split into `n` shards of balanced cost, deterministically.

        An epoch is never split; calibrators are placed one by one. Units go, largest
        first (ties by name), to the shard with the least cost so far (ties: lowest
        index). Shards may be empty when there are fewer units than shards.
        """
        if n < 1:
            raise ValueError(f"number of shards: expected >= 1, got {n}")
        units: dict[tuple[str, str], list[ExposureInfo]] = {}
        for e in self.exposures:
            key = ("epoch", e.epoch) if e.epoch is not None else ("exposure", e.name)
            units.setdefault(key, []).append(e)
        order = sorted(units.items(), key=lambda kv: (-sum(e.cost for e in kv[1]), kv[0]))
        heap = [(0, i) for i in range(n)]
        members: list[list[ExposureInfo]] = [[] for _ in range(n)]
        for _, exposures in order:
            load, i = heapq.heappop(heap)
            members[i].extend(exposures)
            heapq.heappush(heap, (load + sum(e.cost for e in exposures), i))
        return [self._shard(i, m) for i, m in enumerate(members)]

    def _shard(self, index: int, members: list[ExposureInfo]) -> Shard:
        members = sorted(members, key=lambda e: (e.expmid, e.name))
        epochs = sorted({e.epoch for e in members if e.epoch is not None})
        cost = sum(e.cost for e in members)
        return Shard(index, tuple(e.name for e in members), tuple(epochs), cost)

    def read(self, names: Iterable[str]) -> dict[str, ExposureRecord]:
        """Arrays and metadata of exposures `names` (e.g. `shard.exposures`), in order.

        Reads exactly one chunk per array of each named exposure, nothing else.
        """
        records = {}
        nodes = self._root.metadata.consolidated_metadata.flattened_metadata
        for name in names:
            info = self.info(name)
            group = f"exposures/{name}"
            present = [a for a in SLOPE_MASK_ARRAYS if f"{group}/{a}" in nodes]
            arrays = {a: self._root[f"{group}/{a}"][...] for a in (*ARRAYS, *present)}
            meta = {f: getattr(info, f) for f in META_FIELDS}
            records[name] = ExposureRecord(**meta, **arrays)
        return records


def _infos(root: zarr.Group) -> list[ExposureInfo]:
    """Every committed exposure's metadata, from the consolidated root document."""
    consolidated = root.metadata.consolidated_metadata
    nodes = consolidated.flattened_metadata if consolidated is not None else {}
    epoch_of = {n: ep for ep, names in root.attrs["epochs"].items() for n in names}
    infos = []
    for name in root.attrs["exposures"]:
        attrs = nodes[f"exposures/{name}"].attributes
        shape = tuple(nodes[f"exposures/{name}/slope"].shape)
        infos.append(_info(name, epoch_of.get(name), shape, attrs))
    return infos


def _info(name: str, epoch: str | None, shape: tuple, attrs: Mapping[str, Any]) -> ExposureInfo:
    fields = {f.name for f in dataclasses.fields(ExposureInfo)} - {"name", "epoch", "shape"}
    return ExposureInfo(name=name, epoch=epoch, shape=shape, **{f: attrs[f] for f in fields})
