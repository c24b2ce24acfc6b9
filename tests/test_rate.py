"""Rate exposures: one count-rate image per exposure (a pipeline's `_rate`/`_cal` product),
fitted with a Gaussian whose variance is the file's, held fixed.

Physics: the mean rate is the slopes' rate when nothing charge-dependent acts, its NLL
matches a dense normal and has finite-difference gradients, χ² at the truth is calibrated,
NaN on bad pixels reaches nothing. Engine: a campaign mixing slope and rate exposures
batches them apart, equals the plain per-exposure loop, preconditions rates to a
Gauss-Newton step and shards with zero-weight padding.
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.stats import norm

from model import make_spec
from model.likelihood import rate_nll
from scaling.fitting.objective import (
    LIKELIHOODS,
    batch_chi_squared,
    residual_maps,
)
from scaling.fitting.params import KINDS, Observation, make_batches
from tests.campaigns import mixed_campaign, simulate_rate
from tests.helpers import NPIX, ami_spec, tree_allclose
from tests.test_gradients import Problem, _check_group, _perturbed

RATE_GROUPS = [
    "position",
    "log_flux",
    "spectral_slope",
    "aberrations",
    "log_image",
    "flat",
    "ipc",
    "jitter",
    "dark",
]
"""Parameters a rate depends on; `bfe`, `nonlinearity` and `read_noise` act on ramps only."""

BAD = np.zeros((NPIX, NPIX), dtype=bool)
BAD[3, 4] = BAD[11, 7] = True


@pytest.fixture(scope="module")
def rate_data(ami, ami_params):
    """(data, variance, bad) of a generic resolved source, NaN on the bad pixels."""
    data, variance = simulate_rate(ami, ami_params, ami_spec(), BAD, np.random.default_rng(4))
    return jnp.asarray(data), jnp.asarray(variance), jnp.asarray(BAD)


# --- physics ----------------------------------------------------------------------------


def test_mean_rate_is_the_slope_rate_without_charge_effects(ami, ami_params):
    """With no brighter-fatter effect and no non-linearity, slopes / group time = mean rate
    (IPC included) in every group."""
    params = {**ami_params, "bfe": jnp.zeros(2), "nonlinearity": jnp.zeros(2)}
    spec = ami_spec()
    slopes = eqx.filter_jit(ami.slopes)(params, spec) / spec.group_time
    mean = eqx.filter_jit(ami.mean_rate)(params, spec)
    np.testing.assert_allclose(slopes, jnp.broadcast_to(mean, slopes.shape), rtol=1e-12)
    plain = eqx.filter_jit(ami.rate)(params, spec)
    assert float(jnp.max(jnp.abs(mean - plain))) > 1e-3 * float(jnp.max(plain))  # IPC acts


def test_rate_nll_equals_independent_normals():
    rng = np.random.default_rng(0)
    mean = rng.uniform(3.0, 400.0, (5, 5))
    variance = rng.uniform(1.0, 50.0, (5, 5))
    data = mean + np.sqrt(variance) * rng.standard_normal((5, 5))
    bad = np.zeros((5, 5), dtype=bool)
    bad[1, 3] = bad[4, 0] = True
    ours = rate_nll(*map(jnp.asarray, (data, mean, variance, bad)))
    good = ~bad
    reference = -float(jnp.sum(norm.logpdf(data[good], mean[good], np.sqrt(variance[good]))))
    assert abs(float(ours) - reference) <= 1e-12 * abs(reference)


class RateProblem(Problem):
    """`tests.test_gradients.Problem` with the rate NLL as the loss (NaN on bad pixels)."""

    def __init__(self, exposure, truth, spec, data, variance, bad, seed):
        def loss(p):
            return exposure.rate_nll(p, spec, data, variance, bad)

        self.loss = eqx.filter_jit(loss)
        self.params = _perturbed(truth, seed)
        self.grad = eqx.filter_jit(jax.grad(loss))(self.params)


@pytest.fixture(scope="module")
def rate_problem(ami, ami_params, rate_data):
    return RateProblem(ami, ami_params, ami_spec(), *rate_data, seed=104)


@pytest.mark.parametrize("name", RATE_GROUPS)
def test_rate_nll_gradient(rate_problem, name):
    _check_group(rate_problem, name, seed=RATE_GROUPS.index(name))


def test_ramp_only_parameters_do_not_enter_a_rate(rate_problem):
    assert set(RATE_GROUPS) | {"bfe", "nonlinearity", "read_noise"} == set(rate_problem.params)
    for name in ("bfe", "nonlinearity", "read_noise"):
        assert not np.any(np.asarray(rate_problem.grad[name])), name


def test_chi_squared_at_truth_is_calibrated(ami, ami_params, rate_data):
    chi2, count = ami.rate_chi_squared(ami_params, ami_spec(), *rate_data)
    assert int(count) == NPIX**2 - 2
    assert abs(float(chi2) - float(count)) <= 5 * np.sqrt(2 * float(count))


def test_nan_on_bad_pixels_reaches_neither_value_nor_gradient(
    ami, ami_params, rate_problem, rate_data
):
    """The loss with NaN data and variance on bad pixels is finite, and equals the loss
    with finite numbers there, value and gradient."""
    data, variance, bad = rate_data
    assert np.isnan(data[bad]).all() and np.isnan(variance[bad]).all()
    value = rate_problem.loss(rate_problem.params)
    assert np.isfinite(float(value))
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(rate_problem.grad))
    data, variance = jnp.where(bad, 7.0, data), jnp.where(bad, 3.0, variance)
    finite = RateProblem(ami, ami_params, ami_spec(), data, variance, bad, seed=104)
    np.testing.assert_allclose(finite.loss(finite.params), value, rtol=1e-13)
    assert tree_allclose(finite.grad, rate_problem.grad, rtol=1e-12)


# --- engine -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mixed():
    m, truth, obs, names, epochs = mixed_campaign()
    return m, truth, obs, names, epochs, make_batches(obs, names, epochs)


def test_every_kind_has_its_likelihood():
    assert set(LIKELIHOODS) == set(KINDS)


def test_observations_check_their_kind():
    o = Observation("a", None, make_spec("F430M", 3), np.zeros((2, 4, 4)), np.zeros((4, 4), bool))
    with pytest.raises(ValueError, match="kind"):
        dataclasses.replace(o, kind="counts")
    with pytest.raises(ValueError, match="variance"):
        dataclasses.replace(o, slopes=o.slopes[:1], kind="rate")
    with pytest.raises(ValueError, match="variance"):
        dataclasses.replace(o, variance=np.ones_like(o.slopes))


def test_batches_never_mix_kinds(mixed):
    *_, obs, names, _, batches = mixed
    kind_of = {o.name: o.kind for o in obs}
    seen = []
    for b in batches:
        members = [names[i] for i in np.asarray(b.exposure_index)]
        assert {kind_of[n] for n in members} == {b.kind}
        assert (b.variance is None) == (b.kind == "slopes")
        if b.kind == "rate":
            assert b.variance.shape == b.slopes.shape == (b.size, 1, *b.bad.shape[1:])
        seen += members
    assert sorted(seen) == sorted(names)
    assert sorted((b.kind, b.resolved, b.size) for b in batches) == [
        ("rate", True, 3),
        ("slopes", True, 2),
    ]


def _perturbed_campaign(truth):
    start = jax.tree.map(lambda x: x, truth)
    start["exposure"]["log_flux"] = truth["exposure"]["log_flux"] + 0.02
    start["exposure"]["position"] = truth["exposure"]["position"] + 0.005
    start["shared"]["ipc"] = truth["shared"]["ipc"].at[0, 1].add(0.01)
    return start


def test_rate_residual_maps_and_chi_squared(mixed):
    """A rate's residual map is its whitened residual (NaN on bad pixels), whose squares
    sum to its χ²."""
    m, truth, obs, _, epochs, batches = mixed
    maps = residual_maps(m, truth, obs, epochs)
    for b in batches:
        chi2, count = batch_chi_squared(m, truth, b)
        for k, i in enumerate(np.asarray(b.exposure_index)):
            o = obs[i]
            assert np.array_equal(np.isnan(maps[o.name]), o.bad)
            if o.kind == "rate":
                good = ~o.bad
                assert int(count[k]) == good.sum()
                np.testing.assert_allclose(np.sum(maps[o.name][good] ** 2), chi2[k], rtol=1e-12)
