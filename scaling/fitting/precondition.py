"""Fisher preconditioning of low-dimensional parameters.

For a Gaussian likelihood with covariance C (held at its value at the start), the Fisher
information of parameter θ_i is F_ii = Σ_exposures Σ_pixels (L⁻¹ ∂μ/∂θ_i)², with C = L Lᵀ
each pixel's slope covariance and μ the model slopes (for a rate exposure μ is the model
rate and L the file's σ). The engine multiplies the gradient
of a preconditioned parameter by 1 / F_ii, so a unit learning rate is a diagonal
Gauss-Newton step whatever the parameter's scale. Parameters not listed keep a factor 1.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from model import ExposureModel
from scaling.fitting.objective import LIKELIHOODS
from scaling.fitting.params import Batch, over_exposures

PRECONDITIONED = (
    "position",
    "log_flux",
    "spectral_slope",
    "aberrations",
    "positions",
    "log_fluxes",
    "pointing",
    "log_scale",
    "separation",
    "position_angle",
    "contrast",
)
"""Default parameters scaled by their inverse Fisher diagonal."""

PIXEL_LOCAL = ("flat",)
"""Shared per-pixel maps whose element i moves only pixel i's model data (up to the IPC
and brighter-fatter coupling of neighbours): their Fisher diagonal is one JVP along all
ones, F_ii = Σ_exposures Σ_slopes (L⁻¹ J 1)²_i, not one JVP per pixel (exact for a
diagonal IPC kernel and no brighter-fatter effect, the nominal detector)."""


def _whitened_model(model: ExposureModel, params: dict, reference: dict, batch: Batch):
    """(b, s, p, p) L⁻¹ μ(params) with L from the model at `reference`; 0 on bad pixels
    and masked slopes."""
    kind = LIKELIHOODS[batch.kind]

    def one(p, p0, spec, bad, extra):
        mu0 = jax.lax.stop_gradient(kind.mean(model, p0, spec))
        y = kind.whiten(kind.mean(model, p, spec), mu0, p0, spec, extra, bad)
        return jnp.where(bad, 0.0, y)

    whitened = over_exposures(one, batch, (params, reference), batch.bad, batch.extra)
    return batch.weight[:, None, None, None] * whitened


@eqx.filter_jit
def _squared_column(model: ExposureModel, params: dict, tangent: dict, batch: Batch):
    """(b,) Σ_pixels (L⁻¹ J t)² per exposure for a tangent t of the parameters."""
    _, jy = jax.jvp(lambda p: _whitened_model(model, p, params, batch), (params,), (tangent,))
    return jnp.sum(jy**2, axis=(1, 2, 3))


@eqx.filter_jit
def _squared_pixels(model: ExposureModel, params: dict, tangent: dict, batch: Batch):
    """(p, p) Σ_exposures Σ_slopes (L⁻¹ J t)² per pixel for a tangent t."""
    _, jy = jax.jvp(lambda p: _whitened_model(model, p, params, batch), (params,), (tangent,))
    return jnp.sum(jy**2, axis=(0, 1))


def _pixel_local_diagonal(model, params: dict, name: str, batches: list[Batch]):
    """Fisher diagonal (p, p) of the shared per-pixel map `name` (see `PIXEL_LOCAL`)."""
    tangent = jax.tree.map(jnp.zeros_like, params)
    tangent["shared"][name] = jnp.ones_like(params["shared"][name])
    return sum(_squared_pixels(model, params, tangent, b) for b in batches)


def _basis(params: dict, part: str, name: str, filt: str | None):
    """Tangents moving one element of a parameter (in every exposure at once)."""
    leaf = params[part][name] if filt is None else params[part][name][filt]
    per = leaf.shape[1:] if part == "exposure" else leaf.shape
    size = int(np.prod(per))
    for j in range(size):
        unit = jnp.zeros(size).at[j].set(1.0).reshape(per)
        t = jax.tree.map(jnp.zeros_like, params)
        value = jnp.broadcast_to(unit, leaf.shape)
        if filt is None:
            t[part][name] = value
        else:
            t[part][name][filt] = value
        yield j, per, t


def fisher_diagonal(
    model: ExposureModel, params: dict, batches: list[Batch], names=PRECONDITIONED
) -> dict:
    """Diagonal Fisher information, a pytree like `params` (1 where not preconditioned).

    Shared entries are sums over `batches`, so a cluster sums its workers' shared parts
    (then applies `unit_outside`) and keeps each worker's local part.
    """
    fisher = jax.tree.map(jnp.ones_like, params)
    for part in ("shared", "exposure"):
        for name in params[part]:
            if name not in names:
                continue
            leaf = params[part][name]
            if part == "shared" and name in PIXEL_LOCAL:
                fisher[part][name] = _pixel_local_diagonal(model, params, name, batches)
                continue
            for filt in leaf if isinstance(leaf, dict) else [None]:
                target = leaf if filt is None else leaf[filt]
                diag = jnp.zeros_like(target)
                for j, per, tangent in _basis(params, part, name, filt):
                    col = jnp.zeros(target.shape[0] if part == "exposure" else ())
                    for b in batches:
                        if filt is not None and b.filter != filt:
                            continue
                        per_exp = _squared_column(model, params, tangent, b)
                        if part == "exposure":
                            col = col.at[b.exposure_index].add(per_exp)
                        else:
                            col = col + jnp.sum(per_exp)
                    idx = np.unravel_index(j, per) if per else ()
                    if part == "exposure":
                        diag = diag.at[(slice(None), *idx)].set(col)
                    else:
                        diag = diag.at[idx].set(col)
                if filt is None:
                    fisher[part][name] = diag
                else:
                    fisher[part][name][filt] = diag
    return fisher


PIXEL_FLOOR = 1e-4
"""A pixel-local Fisher diagonal is held at least this fraction of its largest entry, so
that pixels with little light (or masked ones) take damped steps, not 0/0."""


def floor_pixel_local(scale: dict) -> dict:
    """`scale` with each shared `PIXEL_LOCAL` map floored at `PIXEL_FLOOR` of its maximum
    (applied to the complete, summed scale: the single process and the cluster alike)."""
    shared = dict(scale["shared"])
    for name in PIXEL_LOCAL:
        if name in shared:
            shared[name] = jnp.maximum(shared[name], PIXEL_FLOOR * jnp.max(shared[name]))
    return {**scale, "shared": shared}


def unit_outside(scale: dict, names) -> dict:
    """`scale` with every leaf of a parameter not in `names` set to 1."""
    return {
        part: {
            name: leaf if name in names else jax.tree.map(jnp.ones_like, leaf)
            for name, leaf in tree.items()
        }
        for part, tree in scale.items()
    }
