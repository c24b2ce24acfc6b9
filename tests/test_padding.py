"""One batch per filter and frame shape: shorter ramps padded with masked slopes, and
calibrators (point sources: `ExposureSpec.resolved` False) beside resolved exposures.

The campaign is `tests.campaigns.tiny_campaign` (4 groups, a calibrator) with one
exposure cut to 3 groups (the first slopes of a longer ramp are those of the shorter one)
and given slope masks of its own. The engine on its single batch must equal the unpadded
reference loop, and the cut exposure's χ², residual map and Fisher diagonal those of the
exposure alone.
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import make_spec
from scaling.fitting.objective import chi_squared_by_exposure, loss, residual_maps
from scaling.fitting.params import make_batches, padded
from scaling.fitting.precondition import fisher_diagonal
from scaling.fitting.reference import reference_value_and_grad
from tests.campaigns import mixed_campaign, tiny_campaign
from tests.helpers import generic_ami_params

REG = {"tv": 1.0, "maxent": 0.1}
CUT = "sci00"
"""The exposure cut to 3 of the campaign's 4 groups."""


def _cut(obs, ngroups: int):
    """`obs` as the first `ngroups` groups of its ramp."""
    spec = dataclasses.replace(obs.spec, ngroups=ngroups)
    return dataclasses.replace(obs, spec=spec, slopes=obs.slopes[: ngroups - 1])


def _own_masks(obs):
    """`obs` with slope masks of its own: a saturating tail and a slope mid-ramp."""
    s, p, _ = obs.slopes.shape
    mask = np.zeros(obs.slopes.shape, bool)
    mask[-1, 3:6, 3:6] = True
    mask[0, 7, 2] = True
    nints = float(obs.spec.nints)
    counts = np.where(mask, 0.0, nints)
    pairs = np.full((s - 1, p, p), nints)
    pairs[-1, 3:6, 3:6] = 0.0
    return dataclasses.replace(obs, slope_mask=mask, counts=counts, pair_counts=pairs)


@pytest.fixture(scope="module")
def campaign():
    """(model, params away from the truth, observations, names, epochs)."""
    m, truth, obs, names, epochs = tiny_campaign()
    obs = [_own_masks(_cut(o, 3)) if o.name == CUT else o for o in obs]
    params = jax.tree.map(lambda x: x, truth)
    params["exposure"]["log_flux"] = truth["exposure"]["log_flux"] + 0.02
    params["shared"]["aberrations"]["F430M"] = 0.5 * truth["shared"]["aberrations"]["F430M"]
    return m, params, obs, names, epochs


def _alone(obs, names, params, name: str):
    """([the observation `name`], [name], params with only its exposure row)."""
    i = names.index(name)
    local = jax.tree.map(lambda x: x[i : i + 1], params["exposure"])
    return [obs[i]], [name], {**params, "exposure": local}


def test_a_longer_ramp_starts_with_the_shorter_ones_slopes(ami):
    params = generic_ami_params()
    slopes = eqx.filter_jit(ami.slopes)
    short = slopes(params, make_spec("F430M", 3, roll=20.0))
    long = slopes(params, make_spec("F430M", 6, roll=20.0))
    assert long.shape[0] == 5
    np.testing.assert_allclose(long[:2], short, rtol=1e-13, atol=0)


def test_one_batch_with_masked_padding_and_calibrators(campaign):
    _, _, obs, names, epochs = campaign
    (batch,) = make_batches(obs, names, epochs)
    assert (batch.resolved, batch.size, batch.spec.ngroups) == (True, len(obs), 4)
    members = [names[i] for i in np.asarray(batch.exposure_index)]
    calibrator = [obs[names.index(n)].epoch is None for n in members]
    assert sum(calibrator) == 1
    np.testing.assert_array_equal(batch.spec.resolved, np.logical_not(calibrator))
    assert int(batch.epoch_index[calibrator.index(True)]) == 0
    k, cut = members.index(CUT), obs[names.index(CUT)]
    np.testing.assert_array_equal(batch.slopes[k, :2], cut.slopes)
    assert bool(jnp.all(batch.counts.bad[k, 2])) and bool(jnp.all(batch.slopes[k, 2] == 0))
    np.testing.assert_array_equal(batch.counts.bad[k, :2], cut.slope_counts().bad)
    assert float(jnp.sum(batch.counts.pairs[k, 1])) == 0.0


def test_engine_on_padded_batches_equals_the_unpadded_reference(campaign):
    m, params, obs, names, epochs = campaign
    batches = make_batches(obs, names, epochs)
    value, grads = eqx.filter_jit(jax.value_and_grad(loss, argnums=1))(m, params, batches, REG)
    ref_value, ref_grads = reference_value_and_grad(m, params, obs, names, epochs, REG)
    assert abs(float(value - ref_value)) <= 1e-10 * abs(float(ref_value))
    for (path, g), r in zip(
        jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(ref_grads), strict=True
    ):
        scale = float(jnp.max(jnp.abs(r)))
        assert float(jnp.max(jnp.abs(g - r))) <= 1e-10 * scale + 1e-300, path


def test_chi_squared_residuals_and_fisher_ignore_the_padding(campaign):
    """Of the padded exposure, as of the same exposure alone and unpadded."""
    m, params, obs, names, epochs = campaign
    batches, i = make_batches(obs, names, epochs), names.index(CUT)
    alone, alone_names, alone_params = _alone(obs, names, params, CUT)
    alone_batches = make_batches(alone, alone_names, epochs)
    rows = chi_squared_by_exposure(m, params, batches)
    kept = [int(np.sum(~np.asarray(o.slope_counts().bad))) for o in obs]
    assert [int(rows[k][1]) for k in range(len(obs))] == kept
    (row,) = chi_squared_by_exposure(m, alone_params, alone_batches).values()
    assert rows[i] == pytest.approx(row, rel=1e-12)
    maps = residual_maps(m, params, obs, epochs)
    (alone_map,) = residual_maps(m, alone_params, alone, epochs).values()
    np.testing.assert_allclose(maps[CUT], alone_map, rtol=1e-12, atol=1e-14)
    fisher = fisher_diagonal(m, params, batches, ("log_flux",))
    alone_fisher = fisher_diagonal(m, alone_params, alone_batches, ("log_flux",))
    expected = alone_fisher["exposure"]["log_flux"][0]
    assert float(fisher["exposure"]["log_flux"][i]) == pytest.approx(float(expected), rel=1e-10)


def test_rates_of_different_lengths_share_a_batch_unpadded():
    _, _, obs, names, epochs = mixed_campaign()
    rate = next(o for o in obs if o.kind == "rate")
    longer = padded(rate, rate.spec.ngroups + 3)
    assert longer.spec.ngroups == rate.spec.ngroups + 3
    assert longer.slopes is rate.slopes and longer.slope_mask is None
    with pytest.raises(ValueError, match="cannot be padded"):
        padded(rate, rate.spec.ngroups - 1)
    rates = [o for o in obs if o.kind == "rate" and o.epoch is not None]
    shorter = dataclasses.replace(rates[1].spec, ngroups=rates[1].spec.ngroups - 1)
    rates = [rates[0], dataclasses.replace(rates[1], spec=shorter)]
    (batch,) = make_batches(rates, names, epochs)
    assert batch.slopes.shape[1] == 1 and batch.spec.ngroups == rates[0].spec.ngroups
