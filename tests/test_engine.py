"""The single-process engine: batched gradients, optimisers, start steps, resume, devices."""

import json
import os
import subprocess
import sys
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scaling.engine import FitSettings, make_fitter, run
from scaling.objective import loss
from scaling.optimisers import OptimiserSpec
from scaling.partition import make_batches
from scaling.reference import reference_value_and_grad
from tests.engine_campaign import tiny_campaign

REG = {"tv": 1.0, "maxent": 0.1}


@pytest.fixture(scope="module")
def campaign():
    m, truth, obs, names, epochs = tiny_campaign()
    return m, truth, obs, names, epochs, make_batches(obs, names, epochs)


def _perturbed(truth):
    start = jax.tree.map(lambda x: x, truth)
    start["exposure"]["log_flux"] = truth["exposure"]["log_flux"] + 0.02
    start["exposure"]["position"] = truth["exposure"]["position"] + 0.005
    start["shared"]["aberrations"]["F430M"] = 0.5 * truth["shared"]["aberrations"]["F430M"]
    return start


SETTINGS = FitSettings(
    {
        "position": OptimiserSpec("sgd", 0.5, 0, True),
        "log_flux": OptimiserSpec("sgd", 0.5, 0, True),
        "aberrations": OptimiserSpec("sgd", 0.5, 2, True),
        "log_image": OptimiserSpec("adam", 0.02, 3),
    },
    REG,
)


@pytest.fixture(scope="module")
def fitted(campaign):
    """A compiled fitter and 3 recorded steps from the perturbed start."""
    m, truth, *_, batches = campaign
    start = _perturbed(truth)
    fitter = make_fitter(m, start, batches, SETTINGS)
    seen = []
    result = run(fitter, start, batches, 3, progress=False, callback=lambda *a: seen.append(a[1]))
    return fitter, start, seen, result


def test_batches_group_by_kind(campaign):
    *_, batches = campaign
    sizes = sorted((b.resolved, b.size) for b in batches)
    assert sizes == [(False, 1), (True, 4)]
    for b in batches:
        assert sorted(set(np.asarray(b.exposure_index))) == sorted(np.asarray(b.exposure_index))


def test_engine_gradient_equals_reference_loop(campaign):
    m, truth, obs, names, epochs, batches = campaign
    params = _perturbed(truth)
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
    _, start, seen, result = fitted
    ab0 = start["shared"]["aberrations"]["F430M"]
    np.testing.assert_array_equal(seen[0]["shared"]["aberrations"]["F430M"], ab0)
    np.testing.assert_array_equal(seen[1]["shared"]["aberrations"]["F430M"], ab0)
    assert not np.array_equal(seen[2]["shared"]["aberrations"]["F430M"], ab0)
    np.testing.assert_array_equal(seen[-1]["shared"]["flat"], start["shared"]["flat"])
    assert np.all(np.diff(result.history["total"]) < 0)
    assert set(result.history) >= {"total", "nll", "regulariser", "grad_norm"}


def test_steps_never_move_aberrations_along_null_directions(campaign):
    """A global piston (a null direction of the pupil basis) leaves the loss unchanged,
    and the shared step's updates are projected off it: the start's piston is kept."""
    m, truth, *_, batches = campaign
    start = _perturbed(truth)
    value = loss(m, start, batches, REG)
    start["shared"]["aberrations"]["F430M"] = start["shared"]["aberrations"]["F430M"] + 5.0
    assert abs(float(loss(m, start, batches, REG) - value)) <= 1e-12 * abs(float(value))
    result = run(make_fitter(m, start, batches, SETTINGS), start, batches, 4, progress=False)
    fitted = result.params["shared"]["aberrations"]["F430M"]
    moved = fitted - start["shared"]["aberrations"]["F430M"]
    assert float(jnp.max(jnp.abs(moved))) > 1e-3
    np.testing.assert_allclose(m.optics.pupil.canonical(moved), moved, rtol=0, atol=1e-12)


def test_preconditioned_sgd_is_a_gauss_newton_step(campaign):
    """With 1/F scaling, lr=1 sgd on fluxes converges to the optimum in a few steps."""
    m, truth, _, _, _, batches = campaign
    start = jax.tree.map(lambda x: x, truth)
    start["exposure"]["log_flux"] = truth["exposure"]["log_flux"] + 0.01
    settings = FitSettings({"log_flux": OptimiserSpec("sgd", 1.0, 0, True)}, REG)
    path = []
    record = lambda s, p, o, t: path.append(np.asarray(p["exposure"]["log_flux"]))  # noqa: E731
    run(
        make_fitter(m, start, batches, settings), start, batches, 6, progress=False, callback=record
    )
    final = path[-1]
    first_error = np.abs(np.asarray(start["exposure"]["log_flux"]) - final).max()
    assert first_error > 1e-3
    assert np.abs(path[2] - final).max() < 1e-2 * first_error
    assert np.abs(path[4] - path[5]).max() < 1e-4 * first_error


def test_resume_equals_uninterrupted(campaign, fitted):
    *_, batches = campaign
    fitter, start, _, full = fitted
    first = run(fitter, start, batches, 1, progress=False)
    rest = run(fitter, first.params, batches, 2, first.state, first.step, progress=False)
    assert rest.step == full.step == 3
    for a, b in zip(jax.tree.leaves(rest.params), jax.tree.leaves(full.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=0)


DEVICE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    from scaling.engine import make_fitter, run, shard_batches
    from scaling.partition import make_batches
    from tests.engine_campaign import tiny_campaign
    from tests.test_engine import SETTINGS, _perturbed
    m, truth, obs, names, epochs = tiny_campaign()
    batches = shard_batches(make_batches(obs, names, epochs))
    start = _perturbed(truth)
    res = run(make_fitter(m, start, batches, SETTINGS), start, batches, 3, progress=False)
    leaves = [np.asarray(x).ravel().tolist() for x in jax.tree.leaves(res.params)]
    shards = len(batches[-1].slopes.sharding.device_set)
    print(json.dumps({"devices": jax.local_device_count(), "shards": shards,
                      "loss": res.history["total"].tolist(), "params": leaves}))
    """
)


def test_two_devices_equal_one(fitted):
    """The same 3 steps with exposures sharded over 2 (fake CPU) devices."""
    *_, one = fitted
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, "-c", DEVICE_SCRIPT], env=env, cwd=root, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (two["devices"], two["shards"]) == (2, 2)
    np.testing.assert_allclose(two["loss"], one.history["total"], rtol=1e-12)
    ref = [np.asarray(x).ravel() for x in jax.tree.leaves(one.params)]
    for a, b in zip(two["params"], ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
