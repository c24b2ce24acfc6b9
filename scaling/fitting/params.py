"""The parameter tree, and batches of exposures that share a shape.

A campaign's parameters form one pytree with three parts:

    {"shared":   {name: array, per-filter name: {filter: array}},  # one copy
     "epoch":    {"log_image": (nepochs, n, n)},                  # one per epoch
     "exposure": {name: (nexposures, ...)}}                       # one per exposure

The role of every name is explicit (`scaling.config.roles.ROLES`); the engine never infers
sharing from keys.
"""

import dataclasses
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from model import ExposureSpec
from model.likelihood import SlopeCounts, uniform_counts
from scaling.config.roles import ROLES
from scaling.data.fitsio import kept_mean

KINDS = ("slopes", "rate")
"""Kinds of exposure data: a ramp's group-difference slopes or a pipeline's rate image."""


@dataclass(frozen=True)
class Observation:
    """One exposure's data and description.

    Attributes:
        name: unique exposure id.
        epoch: epoch name for a resolved (science) exposure, None for a calibrator.
        spec: the physics' description (filter, ngroups, roll, group time, nints, dither).
        slopes: kind "slopes": (ngroups-1, p, p) measured slopes, e-/group; kind "rate":
            (1, p, p) measured count rate, e-/s.
        bad: (p, p) True where a pixel is masked.
        kind: "slopes" (group differences of a ramp) or "rate" (a pipeline's rate image).
        variance: kind "rate": (1, p, p) the file's variance of the rate, (e-/s)²; None
            for slopes (their covariance is modelled).
        slope_mask: kind "slopes" from ramps: (s, p, p) True where a slope is masked
            (saturated, a jump, no integration kept); None: `bad` on every slope.
        counts: (s, p, p) integrations averaged into each slope, with `slope_mask`;
            None: `spec.nints` everywhere.
        pair_counts: (s-1, p, p) integrations that kept both slope k and k+1, with
            `slope_mask`.
    """

    name: str
    epoch: str | None
    spec: ExposureSpec
    slopes: np.ndarray
    bad: np.ndarray
    kind: str = "slopes"
    variance: np.ndarray | None = None
    slope_mask: np.ndarray | None = None
    counts: np.ndarray | None = None
    pair_counts: np.ndarray | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"{self.name}: kind {self.kind!r} is not one of {KINDS}")
        rate = self.kind == "rate"
        if rate and (self.slopes.shape[0] != 1 or np.shape(self.variance) != self.slopes.shape):
            raise ValueError(f"{self.name}: a rate needs (1, p, p) data and variance")
        if not rate and self.variance is not None:
            raise ValueError(f"{self.name}: slopes carry no variance (it is modelled)")
        masks = (self.slope_mask, self.counts, self.pair_counts)
        if any(m is not None for m in masks):
            s = self.slopes.shape
            shapes = (s, s, (s[0] - 1, *s[1:]))
            if rate or any(np.shape(m) != shape for m, shape in zip(masks, shapes, strict=True)):
                raise ValueError(
                    f"{self.name}: slope masks need slopes and all three of slope_mask, "
                    f"counts {s}, pair_counts {shapes[2]}"
                )

    def slope_counts(self) -> SlopeCounts:
        """The slopes' masks and integration counts for the likelihood: the ramp's own,
        or the pixel mask on every slope and `spec.nints` everywhere."""
        if self.slope_mask is None:
            return uniform_counts(jnp.asarray(self.bad), self.spec.nints, self.slopes.shape[0])
        as_float = lambda a: jnp.asarray(a, dtype=jnp.float64)  # noqa: E731
        bad = jnp.asarray(self.slope_mask | self.bad[None])
        return SlopeCounts(bad, as_float(self.counts), as_float(self.pair_counts))

    def mean_slope(self) -> np.ndarray:
        """(p, p) mean of each pixel's kept slopes (a rate: the rate), 0 where none."""
        return kept_mean(self.slopes, ~np.asarray(self.slope_counts().bad))

    def extra(self):
        """What the likelihood needs besides data and mask: a rate's variance (1, p, p),
        the slopes' `SlopeCounts` when they have masks of their own, else None."""
        if self.kind == "rate":
            return jnp.asarray(self.variance, dtype=jnp.float64)
        return None if self.slope_mask is None else self.slope_counts()


class Batch(eqx.Module):
    """Exposures of one filter, frame shape and data kind, stacked along a leading axis
    (shorter ramps padded to the longest: `padded`); resolved (science) exposures and
    point-source calibrators share it.

    Attributes:
        exposure_index: (b,) row of each exposure in the per-exposure parameters.
        epoch_index: (b,) row of its epoch in the per-epoch parameters (0 for calibrators,
            whose model ignores that row: `spec.resolved` is False).
        spec: ExposureSpec with (b,)-shaped traced fields.
        slopes: (b, s, p, p) data (s = 1 for rates); bad: (b, p, p) masks.
        weight: (b,) 1 for real exposures, 0 for padding added for device sharding.
        filter, kind: static (`Observation.kind`).
        resolved: static, True where any member is resolved: its exposures then take the
            per-epoch parameters.
        variance: (b, 1, p, p) rate variances, (e-/s)², for kind "rate"; None for slopes.
        counts: the slopes' `SlopeCounts`, stacked (b, …), when a member has slope masks
            of its own (`Observation.slope_counts`); None otherwise and for rates.
    """

    exposure_index: Int[Array, " b"]
    epoch_index: Int[Array, " b"]
    spec: ExposureSpec
    slopes: Float[Array, "b s p p"]
    bad: Bool[Array, "b p p"]
    weight: Float[Array, " b"]
    filter: str = eqx.field(static=True)
    resolved: bool = eqx.field(static=True)
    kind: str = eqx.field(static=True)
    variance: Float[Array, "b 1 p p"] | None = None
    counts: SlopeCounts | None = None

    @property
    def size(self) -> int:
        return self.slopes.shape[0]

    @property
    def extra(self):
        """Per exposure, what the kind's likelihood needs besides data and mask (see
        `Observation.extra`): the variances or the counts."""
        return self.variance if self.kind == "rate" else self.counts


def padded(obs: Observation, ngroups: int) -> Observation:
    """`obs` as a ramp of `ngroups` ≥ `obs.spec.ngroups` groups.

    Its slopes are followed by zero slopes that are masked and counted from no
    integration, so the likelihood drops them exactly: the Cholesky recursion along the
    slopes is causal, and so is the model's accumulation, so the real slopes' terms are
    unchanged. A rate only takes the new `spec.ngroups`, which its model does not use.
    """
    extra = ngroups - obs.spec.ngroups
    if extra < 0:
        raise ValueError(f"{obs.name}: {obs.spec.ngroups} groups cannot be padded to {ngroups}")
    obs = dataclasses.replace(obs, spec=dataclasses.replace(obs.spec, ngroups=ngroups))
    if obs.kind == "rate" or extra == 0:
        return obs
    counts = obs.slope_counts()

    def pad(a, value):
        a = np.asarray(a)
        return np.concatenate([a, np.full((extra, *a.shape[1:]), value, a.dtype)])

    return dataclasses.replace(
        obs,
        slopes=pad(obs.slopes, 0.0),
        slope_mask=pad(counts.bad, True),
        counts=pad(counts.n, 0.0),
        pair_counts=pad(counts.pairs, 0.0),
    )


def make_batches(
    observations: list[Observation], exposure_names: list[str], epoch_names: list[str]
) -> list[Batch]:
    """Group observations by (filter, frame shape, kind) and stack each group: one batch
    per filter and frame shape of each kind.

    Ramps are padded to the longest (`padded`); each spec's traced `resolved` flag tells a
    calibrator (point source) from a resolved exposure. Order inside a batch follows
    `observations`, so results do not depend on dict order.
    """
    groups: dict[tuple, list[Observation]] = {}
    for obs in observations:
        key = (obs.spec.filter, obs.slopes.shape[1:], obs.kind)
        groups.setdefault(key, []).append(obs)
    batches = []
    for (filt, _, kind), members in sorted(groups.items(), key=lambda kv: str(kv[0])):
        resolved = any(o.epoch is not None for o in members)
        ngroups = max(o.spec.ngroups for o in members)
        members = [padded(o, ngroups) for o in members]
        specs = [
            dataclasses.replace(o.spec, resolved=jnp.asarray(o.epoch is not None)) for o in members
        ]
        spec = jax.tree.map(lambda *xs: jnp.stack(xs), *specs)
        batches.append(
            Batch(
                exposure_index=jnp.asarray([exposure_names.index(o.name) for o in members]),
                epoch_index=jnp.asarray(
                    [0 if o.epoch is None else epoch_names.index(o.epoch) for o in members]
                ),
                spec=spec,
                slopes=jnp.asarray(np.stack([o.slopes for o in members]), dtype=jnp.float64),
                bad=jnp.asarray(np.stack([o.bad for o in members]), dtype=bool),
                weight=jnp.ones(len(members)),
                filter=filt,
                resolved=resolved,
                kind=kind,
                variance=_stacked_variance(members),
                counts=_stacked_counts(members),
            )
        )
    return batches


def _stacked_variance(members: list[Observation]) -> Float[Array, "b 1 p p"] | None:
    """The members' rate variances stacked, or None for slopes (which carry none)."""
    if members[0].variance is None:
        return None
    return jnp.asarray(np.stack([o.variance for o in members]), dtype=jnp.float64)


def _stacked_counts(members: list[Observation]) -> SlopeCounts | None:
    """The members' `SlopeCounts` stacked along a leading exposure axis, or None where no
    member has slope masks of its own (the likelihood then takes the unmasked path)."""
    if all(o.slope_mask is None for o in members):
        return None
    return jax.tree.map(lambda *xs: jnp.stack(xs), *[o.slope_counts() for o in members])


def exposure_params(params: dict, batch: Batch, i_exposure, i_epoch) -> dict:
    """The flat parameter dict of one exposure of `batch` (what `model` consumes)."""
    return select(params, batch.filter, i_exposure, i_epoch if batch.resolved else None)


def over_exposures(fn, batch: Batch, trees: tuple[dict, ...], *arrays):
    """`jax.vmap` of `fn(*params, spec, *rows)` over the exposures of `batch`.

    `params` holds one exposure's flat parameter dict from each tree of `trees` (the fit's
    parameters, and e.g. a reference point); `rows` are that exposure's rows of `arrays`
    (each with the batch axis first).
    """

    def one(i_exp, i_epoch, spec, *rows):
        return fn(*(exposure_params(t, batch, i_exp, i_epoch) for t in trees), spec, *rows)

    return jax.vmap(one)(batch.exposure_index, batch.epoch_index, batch.spec, *arrays)


def select(params: dict, filt: str, i_exposure, i_epoch=None) -> dict:
    """One exposure's flat parameter dict: shared values (this filter's where per filter),
    its row of the exposure parameters and, with `i_epoch`, its epoch's row."""
    p = {k: v[filt] if ROLES[k].per_filter else v for k, v in params["shared"].items()}
    p.update({k: v[i_exposure] for k, v in params["exposure"].items()})
    if i_epoch is not None:
        p.update({k: v[i_epoch] for k, v in params["epoch"].items()})
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
