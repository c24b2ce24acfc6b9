"""Noise realisations of ramp slopes matching `model.likelihood`'s covariance."""

import numpy as np
from numpy.typing import NDArray


def noisy_slopes(
    rng: np.random.Generator,
    mean_slopes: NDArray[np.float64],
    read_noise: float,
    nints: int,
) -> NDArray[np.float64]:
    """Slopes averaged over `nints` simulated integrations, electrons per group.

    Each integration draws Poisson increments with the model's mean slopes, adds an
    independent read-noise draw to every group read, and differences adjacent reads, so
    adjacent slopes share a read exactly as the likelihood assumes.

    Args:
        rng: NumPy random generator (seeded by the caller).
        mean_slopes: (ngroups-1, p, p) model slopes, e- per group, >= 0.
        read_noise: per-read Gaussian noise, e-.
        nints: number of integrations averaged.
    """
    mean = np.clip(np.asarray(mean_slopes, dtype=np.float64), 0.0, None)
    total = np.zeros_like(mean)
    for _ in range(int(nints)):
        increments = rng.poisson(mean).astype(np.float64)
        reads = rng.normal(0.0, read_noise, size=(mean.shape[0] + 1, *mean.shape[1:]))
        total += increments + np.diff(reads, axis=0)
    return total / nints


COSMIC_RAY_CHARGE = (300.0, 3000.0)
"""[e-] Range of the (log-uniform) charge a simulated cosmic ray deposits in a pixel."""


def noisy_ramps(
    rng: np.random.Generator,
    mean_reads: NDArray[np.float64],
    read_noise: float,
    nints: int,
    well_depth: float,
    cosmic_ray_rate: float,
    group_time: float,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(reads, cosmic rays): every group read of `nints` simulated integrations, electrons.

    Each integration draws Poisson increments with the means of the model's reads (the
    first read's mean, then the slopes), cumulated; cosmic rays hit Poisson(rate × pixels ×
    ngroups × group_time) times per integration, each at a uniform pixel and a uniform
    group after the first, adding log-uniform `COSMIC_RAY_CHARGE` electrons to that read
    and every later one (a jump); the charge stops at `well_depth` (saturation); each read
    adds Gaussian read noise.

    Args:
        rng: NumPy random generator (seeded by the caller).
        mean_reads: (ngroups, p, p) model signal at each read, e-.
        read_noise: per-read Gaussian noise, e-.
        nints: number of integrations.
        well_depth: charge a pixel holds at most, e- (inf: none).
        cosmic_ray_rate: hits per pixel per second.
        group_time: seconds between reads.

    Returns:
        (nints, ngroups, p, p) reads, e-; (k, 5) cosmic rays as rows (integration, group,
        y, x, electrons).
    """
    mean = np.clip(np.diff(mean_reads, axis=0, prepend=0.0), 0.0, None)
    ngroups, ny, nx = mean.shape
    charge = np.cumsum(rng.poisson(mean, size=(nints, *mean.shape)), axis=1).astype(np.float64)
    expected = cosmic_ray_rate * ny * nx * ngroups * group_time
    hits = []
    for i in range(nints):
        for _ in range(rng.poisson(expected) if ngroups > 1 else 0):
            g, y, x = rng.integers(1, ngroups), rng.integers(ny), rng.integers(nx)
            electrons = np.exp(rng.uniform(*np.log(COSMIC_RAY_CHARGE)))
            charge[i, g:, y, x] += electrons
            hits.append((i, g, y, x, electrons))
    reads = np.minimum(charge, well_depth) + rng.normal(0.0, read_noise, charge.shape)
    return reads, np.asarray(hits, dtype=np.float64).reshape(-1, 5)
