"""The single-process engine: batched gradients, optimisers, start steps, resume, devices,
and one compilation of each half step for a whole fit.

The campaign mixes exposure kinds (`tests.campaigns.mixed_campaign`: some exposures are
measured rates, the others ramp slopes), so every check here covers both likelihoods, and
one slope exposure is a shorter ramp with slope masks of its own, padded in its batch
(`tests.campaigns.cut_with_masks`), so every check covers the padding too."""

import itertools
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from collections import Counter

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import ExposureModel
from scaling.config import OptimiserConfig
from scaling.fitting.engine import FitSettings, join, make_fitter, renormalise_images, split
from scaling.fitting.objective import loss
from scaling.fitting.params import make_batches
from scaling.fitting.reference import reference_value_and_grad
from tests.campaigns import cut_with_masks, mixed_campaign

REG = {"tv": 1.0, "maxent": 0.1}

SHARED_PAD = 12
"""Optical pixels a side for the shared-PSF mode: the 9-pixel images' half width (4),
the pointings (< 1) and margin."""


def padded_campaign():
    """`mixed_campaign` with exposure sci00 cut to 3 groups with slope masks of its own."""
    m, truth, obs, names, epochs = mixed_campaign()
    obs = [cut_with_masks(o, 3) if o.name == "sci00" else o for o in obs]
    return m, truth, obs, names, epochs


@pytest.fixture(scope="module")
def campaign():
    m, truth, obs, names, epochs = padded_campaign()
    return m, truth, obs, names, epochs, make_batches(obs, names, epochs)


def _perturbed(truth):
    start = jax.tree.map(lambda x: x, truth)
    start["exposure"]["log_flux"] = truth["exposure"]["log_flux"] + 0.02
    start["exposure"]["position"] = truth["exposure"]["position"] + 0.005
    start["shared"]["aberrations"]["F430M"] = 0.5 * truth["shared"]["aberrations"]["F430M"]
    return start


SETTINGS = FitSettings(
    {
        "position": OptimiserConfig("sgd", 0.5, 0, True),
        "log_flux": OptimiserConfig("sgd", 0.5, 0, True),
        "aberrations": OptimiserConfig("sgd", 0.5, 2, True),
        "log_image": OptimiserConfig("adam", 0.02, 3),
    },
    REG,
)


def fit_steps(fitter, params, batches, steps: int, state=None):
    """`steps` calls of `Fitter.step` from `params`, whose images are first renormalised
    (as a fit starts) → (parameters after each step, final state, loss terms of each step)."""
    shared, local = split(params)
    params = join(shared, renormalise_images(local))
    state = fitter.init(params) if state is None else state
    path, terms = [], []
    for _ in range(steps):
        params, state, step_terms = fitter.step(params, state, batches)
        path.append(params)
        terms.append(step_terms)
    return path, state, terms


@pytest.fixture(scope="module")
def fitted(campaign):
    """A compiled fitter and 3 recorded steps from the perturbed start:
    (fitter, start, parameters after each step, final state, loss terms of each step)."""
    m, truth, *_, batches = campaign
    start = _perturbed(truth)
    fitter = make_fitter(m, start, batches, SETTINGS)
    return fitter, start, *fit_steps(fitter, start, batches, 3)


def test_batches_group_by_kind_calibrators_with_science(campaign):
    *_, batches = campaign
    sizes = sorted((b.resolved, b.kind, b.size) for b in batches)
    assert sizes == [(True, "rate", 3), (True, "slopes", 2)]
    for b in batches:
        assert sorted(set(np.asarray(b.exposure_index))) == sorted(np.asarray(b.exposure_index))


def test_engine_gradient_equals_reference_loop(campaign):
    m, truth, obs, names, epochs, batches = campaign
    _check_engine_against_loop(m, _perturbed(truth), obs, names, epochs, batches)


def test_shared_psf_engine_equals_its_loop(campaign):
    """The shared-PSF mode (`model.shared_psf`; under the engine's vmap the PSF is made
    once per batch, in the loop once per exposure) on the two slope exposures of the
    resolved source (one batch), each padded by `SHARED_PAD`."""
    m, truth, obs, names, epochs, _ = campaign
    shared = ExposureModel(m.optics, m.bandpasses, m.oversample, SHARED_PAD)
    obs = [o for o in obs if o.kind == "slopes" and o.epoch is not None]
    (batch,) = make_batches(obs, names, epochs)
    assert batch.size == 2
    _check_engine_against_loop(shared, _perturbed(truth), obs, names, epochs, [batch])


def _check_engine_against_loop(m, params, obs, names, epochs, batches):
    value, grads = eqx.filter_jit(jax.value_and_grad(loss, argnums=1))(m, params, batches, REG)
    ref_value, ref_grads = reference_value_and_grad(m, params, obs, names, epochs, REG)
    assert abs(float(value - ref_value)) <= 1e-10 * abs(float(ref_value))
    for path, g, r in zip(
        jax.tree_util.tree_leaves_with_path(grads),
        jax.tree.leaves(grads),
        jax.tree.leaves(ref_grads),
        strict=True,
    ):
        scale = float(jnp.max(jnp.abs(r)))
        assert float(jnp.max(jnp.abs(g - r))) <= 1e-10 * scale + 1e-300, path[0]


def test_fit_decreases_loss_and_respects_start_steps(fitted):
    _, start, seen, _, terms = fitted
    ab0 = start["shared"]["aberrations"]["F430M"]
    np.testing.assert_array_equal(seen[0]["shared"]["aberrations"]["F430M"], ab0)
    np.testing.assert_array_equal(seen[1]["shared"]["aberrations"]["F430M"], ab0)
    assert not np.array_equal(seen[2]["shared"]["aberrations"]["F430M"], ab0)
    np.testing.assert_array_equal(seen[-1]["shared"]["flat"], start["shared"]["flat"])
    assert np.all(np.diff([t["total"] for t in terms]) < 0)
    assert all(set(t) >= {"total", "nll", "regulariser", "grad_norm"} for t in terms)


def test_steps_never_move_aberrations_along_null_directions(campaign, fitted):
    """A global piston (a null direction of the pupil basis) leaves the loss unchanged,
    and the shared step's updates are projected off it: the start's piston is kept.
    (The fixture's fitter serves: its Fisher scaling is blind to the piston too.)"""
    m, truth, *_, batches = campaign
    start = _perturbed(truth)
    jitted = eqx.filter_jit(loss)
    value = jitted(m, start, batches, REG)
    start["shared"]["aberrations"]["F430M"] = start["shared"]["aberrations"]["F430M"] + 5.0
    assert abs(float(jitted(m, start, batches, REG) - value)) <= 1e-12 * abs(float(value))
    path, *_ = fit_steps(fitted[0], start, batches, 4)
    fitted = path[-1]["shared"]["aberrations"]["F430M"]
    moved = fitted - start["shared"]["aberrations"]["F430M"]
    assert float(jnp.max(jnp.abs(moved))) > 1e-3
    np.testing.assert_allclose(m.optics.pupil.canonical(moved), moved, rtol=0, atol=1e-12)


def test_preconditioned_sgd_is_a_gauss_newton_step(campaign):
    """With 1/F scaling, lr=1 sgd on fluxes converges to the optimum in a few steps."""
    m, truth, _, _, _, batches = campaign
    start = jax.tree.map(lambda x: x, truth)
    start["exposure"]["log_flux"] = truth["exposure"]["log_flux"] + 0.01
    settings = FitSettings({"log_flux": OptimiserConfig("sgd", 1.0, 0, True)}, REG)
    steps, *_ = fit_steps(make_fitter(m, start, batches, settings), start, batches, 6)
    path = [np.asarray(p["exposure"]["log_flux"]) for p in steps]
    final = path[-1]
    first_error = np.abs(np.asarray(start["exposure"]["log_flux"]) - final).max()
    assert first_error > 1e-3
    assert np.abs(path[2] - final).max() < 1e-2 * first_error
    assert np.abs(path[4] - path[5]).max() < 1e-4 * first_error


def test_resume_equals_uninterrupted(campaign, fitted):
    *_, batches = campaign
    fitter, start, full, full_state, full_terms = fitted
    first, first_state, first_terms = fit_steps(fitter, start, batches, 1)
    rest, rest_state, rest_terms = fit_steps(fitter, first[-1], batches, 2, first_state)
    assert len(first + rest) == len(full) == 3
    for a, b in zip(jax.tree.leaves(rest[-1]), jax.tree.leaves(full[-1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=0)
    for a, b in zip(jax.tree.leaves(rest_state), jax.tree.leaves(full_state), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=0)
    totals = [t["total"] for t in first_terms + rest_terms]
    np.testing.assert_allclose(totals, [t["total"] for t in full_terms], rtol=1e-12)


DEVICE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    from scaling.fitting.engine import make_fitter, shard_batches
    from scaling.fitting.params import make_batches
    from tests.test_engine import SETTINGS, _perturbed, fit_steps, padded_campaign
    m, truth, obs, names, epochs = padded_campaign()
    batches = shard_batches(make_batches(obs, names, epochs))
    padded = sorted(int(np.sum(np.asarray(b.weight) == 0)) for b in batches)
    start = _perturbed(truth)
    path, _, terms = fit_steps(make_fitter(m, start, batches, SETTINGS), start, batches, 3)
    leaves = [np.asarray(x).ravel().tolist() for x in jax.tree.leaves(path[-1])]
    shards = sorted(len(b.slopes.sharding.device_set) for b in batches)
    print(json.dumps({"devices": jax.local_device_count(), "shards": shards, "padded": padded,
                      "loss": [t["total"] for t in terms], "params": leaves}))
    """
)


def test_two_devices_equal_one(fitted):
    """The same 3 steps with exposures sharded over 2 (fake CPU) devices: the
    3-exposure batch of rates (two resolved, a calibrator's; with their variances) is
    padded to 4."""
    _, _, path, _, terms = fitted
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, "-c", DEVICE_SCRIPT], env=env, cwd=root, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (two["devices"], two["shards"], two["padded"]) == (2, [2, 2], [0, 1])
    np.testing.assert_allclose(two["loss"], [t["total"] for t in terms], rtol=1e-12)
    ref = [np.asarray(x).ravel() for x in jax.tree.leaves(path[-1])]
    for a, b in zip(two["params"], ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


COMPILED = re.compile(r"Compiling jit\((\w+)\)")
"""What `jax.log_compiles` logs when it compiles a jitted function (its name in brackets)."""


def test_a_fit_compiles_each_half_step_once(campaign, caplog):
    """Five steps, each from new parameter values and crossing every optimiser's start
    step, compile `Fitter.local_step` and `Fitter.shared_step` once each: no retrace from
    values, dtypes, weak types or optimiser-state structure changing between steps."""
    m, truth, *_, batches = campaign
    # Float64 and not weakly typed, as `scaling.fitting.start` makes a fit's parameters
    # (`jnp.asarray(0.1)` in the tiny campaign is weakly typed; a step's output is not).
    start = jax.tree.map(lambda x: jnp.asarray(x, dtype=jnp.float64), _perturbed(truth))
    fitter = make_fitter(m, start, batches, SETTINGS)  # new: compiles on its first step
    with jax.log_compiles(), caplog.at_level(logging.WARNING):
        path, *_ = fit_steps(fitter, start, batches, 5)
    compiled = Counter(hit[1] for hit in map(COMPILED.match, caplog.messages) if hit)
    assert compiled["local_step"] == 1 and compiled["shared_step"] == 1, compiled
    fluxes = [np.asarray(p["exposure"]["log_flux"]) for p in path]
    assert all(not np.array_equal(a, b) for a, b in itertools.pairwise(fluxes))
