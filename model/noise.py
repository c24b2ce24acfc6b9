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
