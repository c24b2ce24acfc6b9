"""Zarr v3 plumbing shared by the campaign and results stores.

A location is a local path, an fsspec URL (`memory://`, `file://`, `s3://bucket/key`,
`gs://bucket/key`; remote schemes need their fsspec package, e.g. s3fs or gcsfs) or a
ready `zarr.abc.store.Store`. Only Zarr v3 is read or written; no node is ever unpickled.
"""

import os
import warnings
from pathlib import Path

import zarr
from zarr.abc.store import Store
from zarr.storage import FsspecStore, LocalStore

Location = str | os.PathLike | Store
"""Where a store lives: a local path, an fsspec URL or a zarr Store."""


class StoreError(ValueError):
    """A store is missing, of another kind, or written by an incompatible schema version."""


def local_path(location: Location) -> Path | None:
    """The local path of `location`, or None for a URL or a Store object."""
    if isinstance(location, Store) or "://" in str(location):
        return None
    return Path(location)


def as_store(location: Location, read_only: bool) -> Store:
    """A zarr Store for `location` (a Store object is returned as it is)."""
    if isinstance(location, Store):
        return location
    path = local_path(location)
    if path is not None:
        return LocalStore(path, read_only=read_only)
    url = str(location)
    options = {"auto_mkdir": True} if url.startswith("file://") else None
    return FsspecStore.from_url(url, read_only=read_only, storage_options=options)


def describe(location: Location) -> str:
    """`location` as it should appear in a message."""
    return repr(location) if isinstance(location, Store) else str(location)


def consolidate(store: Store) -> None:
    """Write consolidated metadata (one read opens the whole hierarchy) into the root.

    Zarr warns that consolidated metadata is not yet part of the v3 specification; that
    one warning is silenced here, nothing else.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Consolidated metadata is currently not part", category=UserWarning
        )
        zarr.consolidate_metadata(store, zarr_format=3)


def open_root(
    store: Store,
    kind: str,
    version: int | tuple[int, ...],
    where: str,
    *,
    mode: str = "r",
    consolidated: bool,
) -> zarr.Group:
    """The root group of a store of `kind` (opened in zarr `mode`), checked against the
    schema `version` (or one of several versions read). With `consolidated`, the whole
    hierarchy's metadata comes in the root document (one read) and must be there.

    Raises:
        StoreError: no group there, another kind of store, or another schema version.
    """
    try:
        root = zarr.open_group(store, mode=mode, zarr_format=3, use_consolidated=consolidated)
    except (FileNotFoundError, ValueError, zarr.errors.BaseZarrError) as err:
        raise StoreError(f"{where}: not a Zarr v3 {kind} store ({err})") from None
    found_kind = root.attrs.get("kind")
    if found_kind != kind:
        raise StoreError(f"{where}: attribute kind: expected {kind!r}, found {found_kind!r}")
    found = root.attrs.get("schema_version")
    versions = (version,) if isinstance(version, int) else version
    if found not in versions:
        older = " and".join(f" older version {v}" for v in versions[:-1])
        read = f"{versions[-1]}, and{older};" if older else f"{versions[-1]},"
        raise StoreError(
            f"{where}: attribute schema_version: this code reads version {read} "
            f"the store was written with {found!r}"
        )
    return root
