"""JWST ramps (`_uncal`, `_ramp`) → group-difference slopes with per-slope masks.

A ramp product holds SCI (nints, ngroups, ny, nx) in DN: an `_uncal` file (`Level1bModel`)
raw uint16 counts, bias included, and no data-quality arrays; a `_ramp` file (stage 1,
`RampModel`) float32 counts with PIXELDQ (ny, nx) and GROUPDQ (nints, ngroups, ny, nx).
`read_ramp` turns one into slopes in electrons per group, per pixel:

1. only the first `RampOptions.max_groups` groups are kept (all by default), for ramps
   read past the detector's linear range;
2. a group is saturated where GROUPDQ has SATURATED, or, in a file without GROUPDQ, where
   its DN reach `RampOptions.saturation_dn`; it stays saturated to the end of its
   integration, and (by default, `RampOptions.saturated` = "slopes") it counts as
   saturated in every integration of its pixel: a near-threshold pixel saturates earlier
   in integrations whose photon noise ran high, so keeping a late group only where it
   had not saturated would keep the low draws and bias that slope low. GROUPDQ
   DO_NOT_USE makes a group unusable too;
3. the differences of adjacent groups times the gain, d_k = (g_k+1 − g_k) × gain, e-: d_k
   is dropped where g_k or g_k+1 is saturated or unusable, or g_k+1 has JUMP_DET;
4. σ², the read-noise variance per read, is measured from the data: minus the
   covariance of adjacent differences over integrations (they share one read and nothing
   else), pooled over the pixels with every difference usable, before the clip below
   and again after it (`_read_noise`); with fewer than 2 integrations, or no such pixel,
   `FALLBACK_READ_NOISE_DN` × gain;
5. per pixel and difference, integrations more than `jwst.CLIP_SIGMA` (4) sigma from the
   median of those kept are dropped, iteratively (`clip_integrations`, as for
   `_rateints` products), sigma being 1.4826 × MAD but at least the expected noise
   √(max(mean, 0) + 2 σ²) (the MAD of a few integrations is often small by chance): it
   finds the jumps of an `_uncal` file, and cosmic rays the jump step missed;
6. the slope is the mean of d_k over the n_k integrations kept, its variance
   (μ + 2 σ²) / n_k with μ the pixel's mean kept slope (the rate is constant up the
   ramp; averaged over the slopes, a faint pixel's noise biases the photon term less),
   at least 0;
7. a pixel is bad on reference pixels (SUBSTRT), where PIXELDQ has DO_NOT_USE, and where
   no slope is kept; a slope is masked where no integration kept it or its pixel is bad
   (its value and variance NaN). n_k and the pair counts n_k,k+1 (integrations keeping
   both d_k and d_k+1) go with the slopes: the likelihood's covariance needs both.
"""

import os
from dataclasses import dataclass

import numpy as np
from astropy.io import fits

from scaling.data.jwst import (
    HEADER_KEYWORDS,
    NIRISS_SUBARRAYS,
    ProductError,
    clip_integrations,
    product_header,
    reference_pixel_mask,
)

SATURATED, JUMP_DET, DO_NOT_USE = 2, 4, 1
"""JWST data-quality bits: GROUPDQ saturated and jump, and DO_NOT_USE (pixels, groups)."""

DEFAULT_SATURATION_DN = 30000.0
"""[DN, raw] Where an `_uncal` group counts as saturated: about 18,000 DN (29,000 e-)
above NIRISS's ~12,000 DN bias, the calibrated well depth (~30,000 e-) below which the Io
ramps were kept linear. The detector's hard saturation lies higher; raise it with
`--saturation-dn` to keep more of each ramp."""

FALLBACK_READ_NOISE_DN = 11.0
"""[DN] NIRISS read noise per read in SUB80 (10-12 DN), used when the data cannot measure it."""

RAMP_KEYWORDS = tuple(k for k in HEADER_KEYWORDS if k != "BUNIT")
"""Keywords a ramp product must carry: a rate product's, less its units (DN, or none)."""


SATURATION_HANDLING = ("slopes", "pixels", "truncate")
"""What a saturated group costs: its slope and those after it ("slopes", the default);
every slope of a pixel saturated in any integration ("pixels", one mask per pixel); or
every pixel's ramp from the first group in which any good pixel saturates ("truncate",
one ramp limit per exposure)."""


@dataclass(frozen=True)
class RampOptions:
    """How ramps become slopes: `saturation_dn` raw DN for files without GROUPDQ,
    `max_groups` (None: all) groups kept from the start of each integration, and
    `saturated`, one of `SATURATION_HANDLING`."""

    saturation_dn: float = DEFAULT_SATURATION_DN
    max_groups: int | None = None
    saturated: str = "slopes"

    def __post_init__(self):
        if self.saturated not in SATURATION_HANDLING:
            raise ValueError(
                f"saturated: expected one of {SATURATION_HANDLING}, got {self.saturated!r}"
            )
        if not (np.isfinite(self.saturation_dn) and self.saturation_dn > 0):
            raise ValueError(f"saturation_dn: expected DN > 0, got {self.saturation_dn}")
        if self.max_groups is not None and self.max_groups < 2:
            raise ValueError(f"max_groups: expected at least 2 groups, got {self.max_groups}")


DEFAULT_RAMPS = RampOptions()
"""The default `RampOptions`: `DEFAULT_SATURATION_DN`, every group kept."""


@dataclass(frozen=True, eq=False)
class RampSlopes:
    """One ramp product as slopes, electrons per group (see the module docstring).

    `slope`, `variance` (e-²): (s, ny, nx) float64, NaN where masked; `slope_mask`
    (s, ny, nx) True = masked; `counts` (s, ny, nx) and `pair_counts` (s-1, ny, nx) int32;
    `bad` (ny, nx); s = ngroups - 1 of the groups kept. `nints` integrations read,
    `read_noise` e- per read (as measured), `gain` e-/DN, `header` the keywords read.
    """

    slope: np.ndarray
    variance: np.ndarray
    bad: np.ndarray
    slope_mask: np.ndarray
    counts: np.ndarray
    pair_counts: np.ndarray
    nints: int
    ngroups: int
    read_noise: float
    gain: float
    header: dict


def read_ramp(path: str | os.PathLike, gain: float | None, options: RampOptions) -> RampSlopes:
    """Slopes of an `_uncal` or `_ramp` product, `gain` e-/DN (see the module docstring).

    Raises:
        ProductError: "FILE: FIELD: problem" for SCI not 4-D or with fewer than 2 groups,
            GROUPDQ or PIXELDQ of another shape, no gain, more than half the pixels
            saturated in every group, and the header checks of rate products.
    """
    file = os.fspath(path)
    with fits.open(file) as hdul:
        header = product_header(file, hdul, RAMP_KEYWORDS)
        sci = hdul["SCI"].data
        _check_sci(file, sci, header)
        groupdq = _flags(file, hdul, "GROUPDQ", sci.shape)
        pixeldq = _flags(file, hdul, "PIXELDQ", sci.shape[2:])
        if gain is None:
            raise ProductError(
                file, "SCI", f"{sci.dtype.name} counts in DN need a gain (e-/DN); give --gain"
            )
        groups = slice(0, options.max_groups)
        dn = np.asarray(sci[:, groups], dtype=np.float64)
        groupdq = None if groupdq is None else groupdq[:, groups]
    saturated, unusable, jump = _group_flags(dn, groupdq, options.saturation_dn)
    reference = reference_pixel_mask(header["SUBSTRT1"], header["SUBSTRT2"], dn.shape[2:])
    bad = reference if pixeldq is None else reference | ((pixeldq & DO_NOT_USE) != 0)
    field = "SCI" if groupdq is None else "GROUPDQ"
    _check_saturation(file, saturated, bad, field)
    if options.saturated == "slopes":
        saturated = np.broadcast_to(saturated.any(axis=0), saturated.shape)
        unusable = unusable | saturated
    elif options.saturated == "pixels":
        bad = bad | saturated.any(axis=(0, 1))
    elif options.saturated == "truncate":
        hit = saturated[:, :, ~bad].any(axis=(0, 2))
        limit = int(np.argmax(hit)) if hit.any() else dn.shape[1]
        if limit < 2:
            raise ProductError(
                file, field, "a good pixel saturates by the second group: no ramp to truncate to"
            )
        dn, saturated, unusable, jump = (a[:, :limit] for a in (dn, saturated, unusable, jump))

    diffs = np.diff(dn, axis=1) * gain
    dropped = unusable[:, :-1] | unusable[:, 1:] | jump[:, 1:] | ~np.isfinite(diffs)
    usable = ~dropped & ~bad
    read_noise = _read_noise(diffs, usable, bad, gain)
    expected = np.sqrt(np.maximum(_mean(diffs, usable), 0.0) + 2 * read_noise**2)
    keep = clip_integrations(diffs, usable, floor=expected)
    counts = keep.sum(axis=0)
    bad = bad | (counts == 0).all(axis=0)
    mask = (counts == 0) | bad
    slope = np.where(mask, np.nan, _mean(diffs, keep))
    read_noise = _read_noise(diffs, keep, bad, gain)
    photons = np.maximum(_mean(slope, ~mask), 0.0)
    variance = (photons + 2 * read_noise**2) / np.where(mask, np.nan, counts)
    return RampSlopes(
        slope=slope,
        variance=variance,
        bad=bad,
        slope_mask=mask,
        counts=counts.astype(np.int32),
        pair_counts=(keep[:, :-1] & keep[:, 1:]).sum(axis=0).astype(np.int32),
        nints=dn.shape[0],
        ngroups=dn.shape[1],
        read_noise=read_noise,
        gain=float(gain),
        header=header,
    )


def is_ramp(hdul: fits.HDUList) -> bool:
    """True for a file whose SCI extension is 4-D (nints, ngroups, ny, nx)."""
    return "SCI" in hdul and hdul["SCI"].header.get("NAXIS") == 4


def _check_sci(file: str, sci: np.ndarray | None, header: dict) -> None:
    """SCI is (nints, ngroups ≥ 2, ny, nx) of the SUBARRAY's size, NGROUPS its groups."""
    shape = None if sci is None else sci.shape
    if sci is None or sci.ndim != 4:
        raise ProductError(file, "SCI", f"shape {shape}, expected 4-D (nints, ngroups, ny, nx)")
    if sci.shape[1] < 2:
        raise ProductError(
            file, "SCI", f"shape {shape} has {sci.shape[1]} group, a ramp needs at least 2"
        )
    expected = NIRISS_SUBARRAYS[header["SUBARRAY"]]
    if sci.shape[2:] != expected:
        raise ProductError(
            file, "SUBARRAY", f"{header['SUBARRAY']} is {expected} pixels but SCI is {shape}"
        )
    if header["NGROUPS"] != sci.shape[1]:
        raise ProductError(
            file, "NGROUPS", f"is {header['NGROUPS']}, but SCI {shape} holds {sci.shape[1]}"
        )


def _flags(file: str, hdul: fits.HDUList, name: str, shape: tuple) -> np.ndarray | None:
    """Extension `name` as int64 bits (None if absent), checked to have `shape`."""
    if name not in hdul:
        return None
    data = hdul[name].data
    if data is None or data.shape != shape:
        got = None if data is None else data.shape
        raise ProductError(file, name, f"shape {got} differs from SCI's {shape}")
    return np.asarray(data).astype(np.int64)


def _group_flags(
    dn: np.ndarray, groupdq: np.ndarray | None, saturation_dn: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(saturated, unusable, jump), each (nints, ngroups, ny, nx) bool; a saturated group
    stays so to the end of its integration, and is unusable."""
    if groupdq is None:
        saturated, unusable, jump = dn >= saturation_dn, False, np.zeros(dn.shape, bool)
    else:
        saturated = (groupdq & SATURATED) != 0
        unusable, jump = (groupdq & DO_NOT_USE) != 0, (groupdq & JUMP_DET) != 0
    saturated = np.logical_or.accumulate(saturated, axis=1)
    return saturated, saturated | unusable, jump


def _check_saturation(file: str, saturated: np.ndarray, bad: np.ndarray, field: str) -> None:
    """Refuse a ramp saturated from its first group in every integration on more than half
    its good pixels: there is nothing to measure, and a fit would see only noise."""
    full = saturated[:, 0].all(axis=0) & ~bad
    if 2 * full.sum() > (~bad).sum():
        raise ProductError(
            file,
            field,
            f"every group is saturated on {int(full.sum())} of {int((~bad).sum())} good "
            "pixels (more than half): nothing to measure there, not fitting noise",
        )


def _mean(values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Mean over axis 0 of the `keep` values (0 where none)."""
    return np.where(keep, values, 0.0).sum(axis=0) / np.maximum(keep.sum(axis=0), 1)


def _read_noise(diffs: np.ndarray, keep: np.ndarray, bad: np.ndarray, gain: float) -> float:
    """Read noise per read, e-: √(−cov(d_k, d_k+1)), the sample covariance over
    integrations, pooled over k and the good pixels whose every difference is kept (a
    ramp cut by saturation selects its differences, which biases their covariance),
    weighted by 1 / the product of the differences' expected variances (bright pixels'
    photon noise would swamp the estimate); see the module docstring."""
    whole = keep.all(axis=(0, 1)) & ~bad
    nints = diffs.shape[0]
    if nints < 2 or not whole.any():
        return FALLBACK_READ_NOISE_DN * gain
    d = diffs[:, :, whole]
    centred = d - d.mean(axis=0)
    covariance = (centred[:, :-1] * centred[:, 1:]).sum(axis=0) / (nints - 1)
    guess = 2 * (FALLBACK_READ_NOISE_DN * gain) ** 2
    variance = np.maximum(d.mean(axis=0), 0.0) + guess
    weight = 1.0 / (variance[:-1] * variance[1:])
    return float(np.sqrt(max(-(weight * covariance).sum() / weight.sum(), 0.0)))
