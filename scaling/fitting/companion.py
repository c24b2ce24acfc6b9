"""Looking for a companion: a χ² map over sky offsets before any gradient fit of a binary.

A binary's χ² has many local minima in separation and position angle (the fringes
repeat), so a gradient fit needs a start near the right one. `companion_grid` evaluates,
on a grid of sky offsets of a companion from a fitted single star, the χ² of every
exposure with the fluxes fitted exactly: the model is linear in them. For each exposure
and grid point the rate is modelled as

    μ = a U(x) + a_x ∂U/∂x + a_y ∂U/∂y + b U(x + d) + dark,

with U(q) the exposure's unit-flux image of a point source at q (its calibration:
aberrations, jitter, flat, IPC), x the single star's fitted position, d the companion's
detector offset (`model.source.companion_offset`, turned by the exposure's roll) and the
two derivative terms a linearised shift of the primary (the single-star fit put it on
the photocentre, which the companion pulls). a, a_x, a_y and b come from the weighted
normal equations (the file's variance); where b would not be positive the point gets
the single star's χ². The flux ratio b / a gives each exposure's contrast.
"""

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from model import ExposureModel
from model.source import companion_offset
from scaling.config.roles import ROLES
from scaling.fitting.params import Observation, select

PSFS_AT_ONCE = 16
"""Companion images computed together (`jax.lax.map` batch): bounds memory."""


@dataclass(frozen=True)
class CompanionGrid:
    """The χ² of a companion at each grid point, summed over exposures.

    Attributes:
        separation: (g,) mas; position_angle: (g,) degrees east of north, in [0, 360).
        chi2: (g,) Σ χ² over exposures with a companion there (fluxes fitted).
        chi2_single: Σ χ² of the single star (its flux and a small shift fitted).
        contrast: (g, e) Δm of the companion in each exposure (inf where b ≤ 0).
        filters: (e,) each exposure's filter.
        exposure_chi2: (g, e) each exposure's χ² with the companion.
        exposure_single: (e,) each exposure's χ² of the single star.
    """

    separation: np.ndarray
    position_angle: np.ndarray
    chi2: np.ndarray
    chi2_single: float
    contrast: np.ndarray
    filters: tuple[str, ...]
    exposure_chi2: np.ndarray
    exposure_single: np.ndarray

    @property
    def best(self) -> int:
        """Index of the lowest χ²."""
        return int(np.argmin(self.chi2))

    def improvement(self, index: int | None = None) -> float:
        """χ²(single star) − χ²(with the companion at `index`, default the best)."""
        return float(self.chi2_single - self.chi2[self.best if index is None else index])

    def sky_offsets(self) -> np.ndarray:
        """(g, 2) offsets (west, north) of the grid points, mas."""
        angle = np.radians(self.position_angle)
        return self.separation[:, None] * np.stack([-np.sin(angle), np.cos(angle)], axis=1)

    def nearest(self, separation: float, position_angle: float) -> int:
        """Index of the grid point nearest a sky offset."""
        angle = np.radians(position_angle)
        target = separation * np.array([-np.sin(angle), np.cos(angle)])
        return int(np.argmin(np.linalg.norm(self.sky_offsets() - target, axis=1)))

    def exposure_bests(self) -> list[int]:
        """Each exposure's own best grid point (the lowest χ² of that exposure alone)."""
        return [int(i) for i in np.argmin(self.exposure_chi2, axis=0)]

    def contrast_by_filter(self, index: int | None = None) -> dict[str, float]:
        """Filter → median Δm over that filter's exposures at `index` (default best)."""
        row = self.contrast[self.best if index is None else index]
        names = sorted(set(self.filters))
        return {
            f: float(np.median([c for c, g in zip(row, self.filters, strict=True) if g == f]))
            for f in names
        }


def sky_grid(max_separation: float, step: float, min_separation: float):
    """(separations mas, position angles degrees) of a square grid of sky offsets of
    spacing `step` mas, kept where min_separation ≤ r ≤ max_separation."""
    n = int(np.floor(max_separation / step))
    west, north = np.meshgrid(np.arange(-n, n + 1) * step, np.arange(-n, n + 1) * step)
    west, north = west.ravel(), north.ravel()
    r = np.hypot(west, north)
    keep = (r >= min_separation) & (r <= max_separation)
    angle = np.degrees(np.arctan2(-west[keep], north[keep])) % 360.0
    return r[keep], angle


def _point_source(params: dict, filt: str, i: int) -> dict:
    """Exposure `i`'s flat parameters as a single point source (no image, no binary)."""
    p = select(params, filt, i)
    return {k: v for k, v in p.items() if ROLES[k].part != "epoch" and not ROLES[k].source}


def _exposure_map(model, params, observation, i, separation, position_angle):
    """(χ² per grid point, Δm per grid point, χ² single) of one exposure."""
    spec = observation.spec
    p = _point_source(params, spec.filter, i)
    unit = {**p, "log_flux": jnp.asarray(0.0), "dark": jnp.asarray(0.0)}

    def image(q):
        return model.mean_rate({**unit, "position": q}, spec)

    x = p["position"]
    jac = jax.jacfwd(image)(x)
    base = np.stack([np.asarray(image(x)), np.asarray(jac[..., 0]), np.asarray(jac[..., 1])])
    base = base.reshape(3, -1)
    dark = model.mean_rate(p, spec) - model.mean_rate({**p, "dark": jnp.asarray(0.0)}, spec)
    good = ~np.asarray(observation.bad).ravel()
    variance = np.asarray(observation.variance[0]).ravel()
    weight = np.where(good, 1.0 / np.where(good, variance, 1.0), 0.0)
    data = np.where(good, np.asarray(observation.slopes[0]).ravel(), 0.0)
    y = np.where(good, data - np.asarray(dark).ravel(), 0.0)
    gram0 = (base * weight) @ base.T
    proj0 = (base * weight) @ y
    total = float((y * weight) @ y)
    single = total - proj0 @ np.linalg.solve(gram0, proj0)

    offsets = jax.vmap(lambda s, a: companion_offset(s, a, spec.roll))(
        jnp.asarray(separation), jnp.asarray(position_angle)
    )
    companions = jax.lax.map(lambda d: image(x + d), offsets, batch_size=PSFS_AT_ONCE)
    companions = np.asarray(companions).reshape(len(separation), -1)
    weighted = companions * weight
    cc = np.einsum("gi,gi->g", weighted, companions)
    cb = weighted @ base.T
    cy = weighted @ y
    g = len(separation)
    gram = np.zeros((g, 4, 4))
    gram[:, :3, :3] = gram0
    gram[:, :3, 3] = cb
    gram[:, 3, :3] = cb
    gram[:, 3, 3] = cc
    proj = np.concatenate([np.broadcast_to(proj0, (g, 3)), cy[:, None]], axis=1)
    solution = np.linalg.solve(gram, proj[..., None])[..., 0]
    chi2 = total - np.einsum("gk,gk->g", proj, solution)
    fainter = solution[:, 3] > 0
    chi2 = np.where(fainter, chi2, single)
    ratio = np.where(fainter, solution[:, 3] / solution[:, 0], 0.0)
    with np.errstate(divide="ignore"):
        contrast = np.where(fainter, -2.5 * np.log10(np.where(fainter, ratio, 1.0)), np.inf)
    return chi2, contrast, single


def companion_grid(
    model: ExposureModel,
    params: dict,
    observations: list[Observation],
    max_separation: float = 600.0,
    step: float = 35.0,
    min_separation: float = 50.0,
) -> CompanionGrid:
    """χ² of a companion on a sky grid (`sky_grid`) about a fitted single star.

    Args:
        model: the exposure model (may be coarser than the fit's: the parameters are the
            same).
        params: the single star's fitted parameter tree, exposure rows in the order of
            `observations`; a binary's own parameters, if any, are ignored.
        observations: rate exposures (kind "rate"; slopes are not supported).
        max_separation, step, min_separation: the grid, mas.
    """
    kinds = {o.kind for o in observations}
    if kinds != {"rate"}:
        raise ValueError(f"companion_grid: rate exposures only, got kinds {sorted(kinds)}")
    separation, position_angle = sky_grid(max_separation, step, min_separation)
    maps = [
        _exposure_map(model, params, o, i, separation, position_angle)
        for i, o in enumerate(observations)
    ]
    chi2 = np.stack([c for c, _, _ in maps], axis=1)
    single = np.asarray([s for _, _, s in maps])
    return CompanionGrid(
        separation,
        position_angle,
        chi2.sum(axis=1),
        float(single.sum()),
        np.stack([dm for _, dm, _ in maps], axis=1),
        tuple(o.spec.filter for o in observations),
        chi2,
        single,
    )
