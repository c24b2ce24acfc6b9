"""Folders written whole or not at all: built beside their destination, then renamed."""

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged_folder(out: Path, marker: str) -> Iterator[Path]:
    """A fresh folder beside `out` that replaces `out` if the block succeeds (and is
    removed if it raises).

    An existing `out` is replaced only if it is empty or holds the file `marker` (it was
    written by the same command before); anything else raises FileExistsError.
    """
    if out.exists():
        previous = out.is_dir() and (not any(out.iterdir()) or (out / marker).exists())
        if not previous:
            raise FileExistsError(f"{out} exists and holds no {marker}; not replacing it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        yield tmp
        tmp.chmod(0o755)
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            out.rename(old / out.name)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
