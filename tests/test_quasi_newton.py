"""The L-BFGS second stage moves only the chosen parameters and lowers the loss."""

import itertools

import jax
import numpy as np
import pytest

from scaling.config import ConfigError, QuasiNewtonConfig
from scaling.fitting.objective import loss
from scaling.fitting.params import make_batches
from scaling.fitting.precondition import fisher_diagonal
from scaling.fitting.quasi_newton import lbfgs_refine

from .campaigns import tiny_campaign

REG = {"tv": 1.0}


@pytest.fixture(scope="module")
def refined():
    m, truth, obs, names, epochs = tiny_campaign(seed=3)
    batches = make_batches(obs, names, epochs)
    start = jax.tree.map(lambda x: x, truth)
    kick = 3.0 * np.random.default_rng(0).standard_normal(7)
    start["shared"]["aberrations"]["F430M"] = truth["shared"]["aberrations"]["F430M"] + kick
    params, totals = lbfgs_refine(m, start, batches, ("aberrations",), 8, REG)
    return m, batches, truth, start, params, totals


def test_lbfgs_never_increases_the_loss_and_ends_lower(refined):
    m, batches, truth, start, params, totals = refined
    assert totals[0] == pytest.approx(float(loss(m, start, batches, REG)), rel=1e-12)
    assert all(b <= a * (1 + 1e-12) for a, b in itertools.pairwise(totals))
    excess = totals[0] - float(loss(m, truth, batches, REG))
    assert float(loss(m, params, batches, REG)) < totals[0] - 0.9 * excess


def test_lbfgs_moves_only_the_chosen_parameters(refined):
    *_, start, params, _ = refined
    moved = params["shared"]["aberrations"]["F430M"] - start["shared"]["aberrations"]["F430M"]
    assert np.max(np.abs(moved)) > 0.1
    np.testing.assert_array_equal(params["epoch"]["log_image"], start["epoch"]["log_image"])
    np.testing.assert_array_equal(params["exposure"]["position"], start["exposure"]["position"])
    np.testing.assert_array_equal(params["exposure"]["log_flux"], start["exposure"]["log_flux"])
    np.testing.assert_array_equal(params["shared"]["flat"], start["shared"]["flat"])


def test_config_rejects_unknown_parameter_names():
    with pytest.raises(ConfigError, match="parameters"):
        QuasiNewtonConfig(steps=3, parameters=("aberations",))


def test_lbfgs_in_fisher_scaled_coordinates_stops_at_its_tolerance(refined):
    """Given the Fisher diagonal, L-BFGS works in θ √F: it never raises the loss, lowers
    it, stops early once two iterations each gain less than `tolerance`, and leaves
    canonical aberration coefficients."""
    m, batches, _, start, _, _ = refined
    names = ("aberrations",)
    scale = fisher_diagonal(m, start, batches, names)
    params, scaled = lbfgs_refine(m, start, batches, names, 8, REG, scale=scale, tolerance=1.0)
    assert all(b <= a * (1 + 1e-12) for a, b in itertools.pairwise(scaled))
    assert float(loss(m, params, batches, REG)) < scaled[0] - 2.0
    assert len(scaled) < 8
    gains = np.diff(scaled)[-2:]
    assert np.all(-gains < 1.0)
    aberrations = params["shared"]["aberrations"]["F430M"]
    np.testing.assert_allclose(m.optics.pupil.canonical(aberrations), aberrations, atol=1e-12)
