"""Compact peaks of a recovered image (volcanoes), placed to a fraction of a pixel."""

import numpy as np
from scipy.ndimage import gaussian_filter, maximum_filter


def peaks(image: np.ndarray, pixel_scale: float, count: int = 8) -> np.ndarray:
    """(count, 2) (x, y) arcsec of the strongest compact peaks (local maxima of the image
    minus its 3-pixel Gaussian blur), strongest first; origin at the image centre. Each
    peak is placed to a fraction of a pixel (`subpixel_offsets`): a volcano blurred over
    several pixels has a flat top, and which of two nearly equal pixels is the maximum
    would otherwise move the peak by a whole pixel."""
    detail = image - gaussian_filter(image, 3.0)
    local = (detail == maximum_filter(detail, size=5)) & (detail > 0)
    rows, cols = np.nonzero(local)
    order = np.argsort(detail[rows, cols])[::-1][:count]
    rows, cols = rows[order], cols[order]
    dx, dy = subpixel_offsets(detail, rows, cols)
    centre = (image.shape[-1] - 1) / 2
    return np.stack([cols + dx - centre, rows + dy - centre], axis=-1) * pixel_scale


def subpixel_offsets(
    image: np.ndarray, rows: np.ndarray, cols: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(dx, dy) pixels: the vertex of the parabola through each local maximum of `image`
    at (`rows`, `cols`) and its two neighbours along x, and along y; within ±0.5 since
    the centre is the largest of the three; 0 on the image's edge or a flat top."""

    def vertex(before: np.ndarray, at: np.ndarray, after: np.ndarray) -> np.ndarray:
        a, b = at - before, at - after
        total = a + b
        return np.where(total > 0, 0.5 * (a - b) / np.where(total > 0, total, 1.0), 0.0)

    n = image.shape[-1]
    inside = (rows > 0) & (rows < n - 1) & (cols > 0) & (cols < n - 1)
    r, c = np.clip(rows, 1, n - 2), np.clip(cols, 1, n - 2)
    dx = vertex(image[r, c - 1], image[r, c], image[r, c + 1])
    dy = vertex(image[r - 1, c], image[r, c], image[r + 1, c])
    return np.where(inside, dx, 0.0), np.where(inside, dy, 0.0)


def nearest_peaks(found: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """(k, 2) the recovered peak nearest to each of the k points `xy`."""
    d = np.hypot(*(xy[:, None, :] - found[None, :, :]).transpose(2, 0, 1))
    return found[np.argmin(d, axis=1)]
