"""One batch per filter and frame shape: shorter ramps padded with masked slopes, and
calibrators (point sources: `ExposureSpec.resolved` False) beside resolved exposures.

The campaign is `tests.campaigns.tiny_campaign` (4 groups, a calibrator) with one
exposure cut to 3 groups (the first slopes of a longer ramp are those of the shorter one)
and given slope masks of its own (`tests.campaigns.cut_with_masks`). The cut exposure's χ²,
residual map and Fisher diagonal must be those of the exposure alone; the engine on padded
batches equals the unpadded reference loop in `tests/test_engine.py`, whose campaign has
such an exposure.
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import make_spec
from scaling.fitting.objective import chi_squared_by_exposure, residual_maps
from scaling.fitting.params import make_batches, padded
from scaling.fitting.precondition import fisher_diagonal
from tests.campaigns import cut_with_masks, mixed_campaign, tiny_campaign
from tests.helpers import generic_ami_params

CUT = "sci00"
"""The exposure cut to 3 of the campaign's 4 groups."""


@pytest.fixture(scope="module")
def campaign():
    """(model, params away from the truth, observations, names, epochs)."""
    m, truth, obs, names, epochs = tiny_campaign()
    obs = [cut_with_masks(o, 3) if o.name == CUT else o for o in obs]
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
