"""Volcano tracks of a fitted Io campaign: where each volcano stands on Io's surface in
every epoch image, and the rotation period its motion implies.

In each epoch where a volcano faces us (visibility above `MIN_VISIBILITY`), its recovered
position is the recovered peak nearest to its true position (as the truth metrics take
it). That sky position, inverted through the orthographic projection of the simulation
(`model.scenes.spot_geometry`), gives the volcano's west longitude and its hour angle
(sub-observer longitude minus its own). A fixed volcano's hour angle grows by 360° per
rotation; the fitted period is the one whose wrapped phase best fits the recovered hour
angles (least squares on the circle, searched within ±`PERIOD_RANGE` of the nominal
period, then refined).
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from scipy.optimize import minimize_scalar

from scaling.report.peaks import nearest_peaks, peaks

MIN_VISIBILITY = 0.3
"""Cosine of the angle from the sub-observer point below which a volcano is not tracked
(near the limb the projection squeezes longitude into a fraction of a pixel)."""

PERIOD_RANGE = 0.25
"""Fractional range about the nominal period searched for the fitted one."""


def hour_angle(xy: np.ndarray, sub_latitude: float, diameter: float) -> np.ndarray:
    """Sub-observer west longitude minus the surface point's, degrees in (-180, 180], of
    sky positions `xy` (..., 2) (x west, y north, arcsec from the disk centre) on a disk
    of `diameter` arcsec seen from `sub_latitude` degrees (positions off the disk are
    taken on its limb)."""
    x, y = np.moveaxis(np.asarray(xy) / (diameter / 2), -1, 0)
    off = np.hypot(x, y)
    x, y = np.where(off > 1, x / off, x), np.where(off > 1, y / off, y)
    z = np.sqrt(np.clip(1 - x**2 - y**2, 0, None))
    lat0 = np.deg2rad(sub_latitude)
    return np.rad2deg(np.arctan2(x, z * np.cos(lat0) - y * np.sin(lat0)))


def _wrap(degrees: np.ndarray) -> np.ndarray:
    return (degrees + 180.0) % 360.0 - 180.0


def _misfit(period: float, hours: np.ndarray, angles: np.ndarray) -> float:
    phase = angles - 360.0 * hours / period
    mean = np.rad2deg(np.angle(np.mean(np.exp(1j * np.deg2rad(phase)))))
    return float(np.sum(_wrap(phase - mean) ** 2))


def rotation_period(hours: np.ndarray, angles: np.ndarray, nominal: float) -> float:
    """Rotation period, hours, that best fits hour angles `angles` (degrees) at times
    `hours`: searched within ±PERIOD_RANGE of `nominal` on a grid fine enough that the
    phase over the whole span moves < 1° a step, then refined (NaN with < 3 points)."""
    if len(hours) < 3:
        return float("nan")
    lo, hi = nominal * (1 - PERIOD_RANGE), nominal * (1 + PERIOD_RANGE)
    span = max(np.ptp(hours), 1.0)
    step = lo**2 / (360.0 * span)
    grid = np.arange(lo, hi, step)
    best = grid[np.argmin([_misfit(p, hours, angles) for p in grid])]
    found = minimize_scalar(
        _misfit, bounds=(best - step, best + step), args=(hours, angles), method="bounded"
    )
    return float(found.x)


@dataclass
class Track:
    """One volcano over the epochs where it faces us: `hours` since the first epoch,
    its true and recovered west longitude and hour angle (degrees)."""

    name: str
    hours: np.ndarray
    true_longitude: np.ndarray
    fitted_longitude: np.ndarray
    fitted_hour_angle: np.ndarray


def volcano_tracks(
    images: np.ndarray, pixel_scale: float, meta: dict, arrays: dict, spot_xy: np.ndarray
) -> list[Track]:
    """The track of every volcano of a simulated campaign in the recovered epoch
    `images` (e, n, n) with `pixel_scale` arcsec pixels.

    Args:
        meta, arrays: the campaign's truth (`scaling.data.truthfiles.load_truth`).
        spot_xy: (e, k, 2) the true volcano positions in the fit's frame (arcsec;
            `scaling.report.truth.truth_in_fit_frame`): each recovered position is moved
            back by the same shift before it is put on Io's surface.
    """
    io = meta["config"]["io"]
    epochs = meta["epochs"]
    hours = 24.0 * (np.asarray([e["mjd"] for e in epochs]) - epochs[0]["mjd"])
    sub_longitude = np.asarray([e["sub_longitude"] for e in epochs])
    shifts = np.asarray(spot_xy) - arrays["spot_xy"]
    found = [peaks(image, pixel_scale) for image in images]
    tracks = []
    for k, volcano in enumerate(io["volcanoes"]):
        seen = [
            i
            for i in range(len(epochs))
            if arrays["spot_visibility"][i, k] > MIN_VISIBILITY and len(found[i])
        ]
        fitted_xy = np.asarray(
            [nearest_peaks(found[i], spot_xy[i, k][None])[0] - shifts[i, k] for i in seen]
        ).reshape(-1, 2)
        angle = hour_angle(fitted_xy, io["sub_latitude"], io["diameter"])
        tracks.append(
            Track(
                volcano["name"],
                hours[seen],
                np.full(len(seen), volcano["longitude"] % 360.0),
                (sub_longitude[seen] - angle) % 360.0,
                angle,
            )
        )
    return tracks


def write_tracks_png(path: str | Path, tracks: list[Track], period: float) -> Path:
    """Recovered against true west longitude of each tracked volcano over time, and its
    hour angle with the fitted rotation period (`period`: the nominal one, hours)."""
    fig = Figure(figsize=(11, 4))
    left, right = fig.subplots(1, 2)
    for i, t in enumerate(tracks):
        colour = f"C{i}"
        left.plot(t.hours, t.true_longitude, "-", color=colour, alpha=0.5)
        left.plot(t.hours, t.fitted_longitude, "o", color=colour, ms=4, label=t.name)
        fitted = rotation_period(t.hours, t.fitted_hour_angle, period)
        label = f"{t.name}: {fitted:.2f} h" if np.isfinite(fitted) else t.name
        right.plot(t.hours, t.fitted_hour_angle, "o", color=colour, ms=4, label=label)
    left.set(xlabel="hours since the first epoch", ylabel="west longitude (deg)", ylim=(0, 360))
    left.set_title("volcanoes: recovered (dots) and true (lines)")
    right.set(xlabel="hours since the first epoch", ylabel="hour angle (deg)", ylim=(-90, 90))
    right.set_title(f"fitted rotation periods (true {period:.2f} h)")
    for ax in (left, right):
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)


def period_metrics(tracks: list[Track], brightness: list[float], nominal: float) -> dict:
    """`volcano_period_h.NAME`: the rotation period (hours) fitted to the track of the
    brightest volcano (none when it is tracked in fewer than 3 epochs)."""
    brightest = tracks[int(np.argmax(brightness))]
    period = rotation_period(brightest.hours, brightest.fitted_hour_angle, nominal)
    return {} if np.isnan(period) else {f"volcano_period_h.{brightest.name}": period}
