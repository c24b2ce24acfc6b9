"""Up-the-ramp charge accumulation with the brighter-fatter effect and non-linearity."""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from model.detector import apply_ipc

CHARGE_SCALE = 1e4
"""Charge unit (electrons) in which the brighter-fatter and non-linearity coefficients act."""


def _spread(dq: Float[Array, "p p"], fx: Float[Array, "p p"], fy: Float[Array, "p p"]):
    """Move fractions fx (half left, half right) and fy (half down, half up) of each
    pixel's new charge to its neighbours; charge leaving the array is lost."""
    out_x, out_y = 0.5 * fx * dq, 0.5 * fy * dq
    kept = dq - 2 * out_x - 2 * out_y
    pad = lambda a: jnp.pad(a, 1)  # noqa: E731
    px, py = pad(out_x), pad(out_y)
    return (
        kept
        + px[1:-1, :-2]  # from the left neighbour
        + px[1:-1, 2:]  # from the right neighbour
        + py[:-2, 1:-1]  # from the neighbour below
        + py[2:, 1:-1]  # from the neighbour above
    )


def accumulate(
    rate: Float[Array, "p p"],
    ngroups: int,
    group_time: Float[Array, ""],
    bfe: Float[Array, "2"],
) -> Float[Array, "ngroups p p"]:
    """Collected charge at each group read, electrons.

    Each group adds `rate * group_time` electrons; of the new charge landing in a pixel
    that already holds Q electrons, a fraction `bfe[0] * Q / CHARGE_SCALE` drifts to its
    x neighbours and `bfe[1] * Q / CHARGE_SCALE` to its y neighbours (brighter-fatter).

    Args:
        rate: (p, p) electron rate per pixel, e-/s.
        ngroups: number of group reads.
        group_time: seconds between reads.
        bfe: (2,) brighter-fatter coefficients (x, y), fraction per 1e4 e- collected.
    """
    dq = rate * group_time

    def step(q, _):
        q = q + _spread(dq, bfe[0] * q / CHARGE_SCALE, bfe[1] * q / CHARGE_SCALE)
        return q, q

    _, charge = jax.lax.scan(step, jnp.zeros_like(rate), None, length=ngroups)
    return charge


def nonlinearity(charge: Float[Array, "..."], coeffs: Float[Array, " k"]) -> Float[Array, "..."]:
    """Measured signal S = Q (1 + Σ_k c_k (Q / CHARGE_SCALE)^k), electrons."""
    x = charge / CHARGE_SCALE
    exponents = jnp.arange(1, coeffs.shape[0] + 1).reshape((1,) * x.ndim + (-1,))
    powers = x[..., None] ** exponents
    return charge * (1 + powers @ coeffs)


def ramp_signal(
    rate: Float[Array, "p p"],
    ngroups: int,
    group_time: Float[Array, ""],
    bfe: Float[Array, "2"],
    ipc: Float[Array, "3 3"],
    nonlin: Float[Array, " k"],
) -> Float[Array, "ngroups p p"]:
    """Measured signal at each group read (electrons) of a ramp: BFE → IPC → non-linearity."""
    charge = accumulate(rate, ngroups, group_time, bfe)
    return nonlinearity(apply_ipc(charge, ipc), nonlin)
