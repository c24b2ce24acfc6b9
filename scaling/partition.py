"""Parameter roles and batches of exposures that share a shape.

A campaign's parameters form one pytree with three parts:

    {"shared":   {name: array, "aberrations": {filter: array}},   # one copy
     "epoch":    {"log_image": (nepochs, n, n)},                  # one per epoch
     "exposure": {name: (nexposures, ...)}}                       # one per exposure

The role of every name is explicit (`ROLES`); the engine never infers sharing from keys.
"""

from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from model import ExposureSpec

ROLES = {
    "aberrations": "shared",
    "flat": "shared",
    "ipc": "shared",
    "bfe": "shared",
    "nonlinearity": "shared",
    "dark": "shared",
    "jitter": "shared",
    "read_noise": "shared",
    "log_image": "epoch",
    "position": "exposure",
    "log_flux": "exposure",
    "spectral_slope": "exposure",
    "positions": "exposure",
    "log_fluxes": "exposure",
}
"""Role of every fitted parameter name: shared, per epoch, or per exposure."""


@dataclass(frozen=True)
class Observation:
    """One exposure's data and description.

    Attributes:
        name: unique exposure id.
        epoch: epoch name for a resolved (science) exposure, None for a calibrator.
        spec: the physics' description (filter, ngroups, roll, group time, nints, dither).
        slopes: (ngroups-1, p, p) measured slopes, e-/group.
        bad: (p, p) True where a pixel is masked.
    """

    name: str
    epoch: str | None
    spec: ExposureSpec
    slopes: np.ndarray
    bad: np.ndarray


class Batch(eqx.Module):
    """Exposures of one filter, ramp length and kind, stacked along a leading axis.

    Attributes:
        exposure_index: (b,) row of each exposure in the per-exposure parameters.
        epoch_index: (b,) row of its epoch in the per-epoch parameters (0 for calibrators).
        spec: ExposureSpec with (b,)-shaped traced fields.
        slopes: (b, s, p, p) data; bad: (b, p, p) masks.
        weight: (b,) 1 for real exposures, 0 for padding added for device sharding.
        filter, resolved: static.
    """

    exposure_index: Int[Array, " b"]
    epoch_index: Int[Array, " b"]
    spec: ExposureSpec
    slopes: Float[Array, "b s p p"]
    bad: Bool[Array, "b p p"]
    weight: Float[Array, " b"]
    filter: str = eqx.field(static=True)
    resolved: bool = eqx.field(static=True)

    @property
    def size(self) -> int:
        return self.slopes.shape[0]


def make_batches(
    observations: list[Observation], exposure_names: list[str], epoch_names: list[str]
) -> list[Batch]:
    """Group observations by (filter, ngroups, resolved, shape) and stack each group.

    Order inside a batch follows `observations`, so results do not depend on dict order.
    """
    groups: dict[tuple, list[Observation]] = {}
    for obs in observations:
        key = (obs.spec.filter, obs.spec.ngroups, obs.epoch is not None, obs.slopes.shape)
        groups.setdefault(key, []).append(obs)
    batches = []
    for (filt, _, resolved, _), members in sorted(groups.items(), key=lambda kv: str(kv[0])):
        specs = [o.spec for o in members]
        spec = jax.tree.map(lambda *xs: jnp.stack(xs), *specs)
        batches.append(
            Batch(
                exposure_index=jnp.asarray([exposure_names.index(o.name) for o in members]),
                epoch_index=jnp.asarray(
                    [epoch_names.index(o.epoch) if resolved else 0 for o in members]
                ),
                spec=spec,
                slopes=jnp.asarray(np.stack([o.slopes for o in members]), dtype=jnp.float64),
                bad=jnp.asarray(np.stack([o.bad for o in members]), dtype=bool),
                weight=jnp.ones(len(members)),
                filter=filt,
                resolved=resolved,
            )
        )
    return batches


def exposure_params(params: dict, batch: Batch, i_exposure, i_epoch) -> dict:
    """The flat parameter dict of one exposure of `batch` (what `model` consumes)."""
    shared = params["shared"]
    p = {k: v for k, v in shared.items() if k != "aberrations"}
    p["aberrations"] = shared["aberrations"][batch.filter]
    p.update({k: v[i_exposure] for k, v in params["exposure"].items()})
    if batch.resolved:
        p["log_image"] = params["epoch"]["log_image"][i_epoch]
    return p


def parameter_labels(params: dict) -> dict:
    """A pytree like `params` whose leaves are the parameter names (optimiser labels)."""
    return {
        part: {
            name: (jax.tree.map(lambda _, n=name: n, leaf) if isinstance(leaf, dict) else name)
            for name, leaf in params[part].items()
        }
        for part in params
    }
