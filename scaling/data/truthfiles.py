"""The truth of a simulated campaign on disk: `truth.json` (scalars, the exposure → epoch
map, the config echoed) and `truth.npz` (arrays), byte-identical for the same content."""

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like np.savez, but with fixed zip timestamps so the bytes depend only on the data."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(value), allow_pickle=False)


def write_truth(folder: Path, truth: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """truth.json (scalars, lists, the config) and truth.npz (arrays) into `folder`."""
    (folder / "truth.json").write_text(json.dumps(truth, indent=2) + "\n")
    _save_npz(folder / "truth.npz", arrays)


def load_truth(folder: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(truth.json as a dict, truth.npz arrays) of a simulated campaign."""
    folder = Path(folder)
    truth = json.loads((folder / "truth.json").read_text())
    with np.load(folder / "truth.npz", allow_pickle=False) as npz:
        return truth, {k: npz[k] for k in npz.files}
