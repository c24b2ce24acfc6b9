"""`scaling bench` on the tiny test campaign: the JSON record and what it must hold."""

import json
import math

import jax.numpy as jnp
import pytest

from scaling.bench import xla_cost
from scaling.cli import main


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    assert main(["bench", "configs/io_test.toml", "--out", str(out), "--repeats", "1"]) == 0
    return json.loads(out.read_text())


def test_bench_record_has_every_field(record):
    assert record["config"] == "configs/io_test.toml"
    assert record["command"].startswith("scaling bench configs/io_test.toml --out ")
    assert {"platform", "cpu_count", "jax_version", "jax_backend", "jax_devices"} <= set(
        record["host"]
    )
    assert record["exposures"] == 5 and sum(record["batch_sizes"]) == 5
    assert record["repeats"] == 1
    assert record["target_met"] == (record["speedup"] >= record["target_speedup"])


def test_bench_timings_are_positive(record):
    for name in ("engine", "reference", "engine_step"):
        t = record["timings"][name]
        assert len(t["all_s"]) == 1 and t["median_s"] == t["all_s"][0] > 0
        assert t["first_call_s"] > 0
    rates = record["exposure_gradients_per_s"]
    assert rates["engine"] > 0 and rates["reference"] > 0
    assert record["speedup"] == pytest.approx(rates["engine"] / rates["reference"])


def test_bench_engine_gradient_equals_reference(record):
    assert 0 <= record["gradient_max_relative_difference"] <= 1e-10
    assert record["value_relative_difference"] <= 1e-10


def test_bench_logging_fraction_is_finite_and_positive(record):
    fraction = record["logging_fraction_of_step"]
    assert math.isfinite(fraction) and fraction > 0
    assert record["log_add_per_step_s"] > 0


def test_xla_cost_counts_a_complex_multiply_add_as_8_real_flops():
    n = 32
    a = jnp.ones((n, n), jnp.complex128)
    cost = xla_cost(jnp.matmul, a, a)
    assert cost["xla_flops"] == cost["complex_dot_xla_flops"] == 2 * n**3
    assert cost["flops"] == 8 * n**3
    real = xla_cost(jnp.matmul, a.real, a.real)
    assert real["flops"] == real["xla_flops"] == 2 * n**3 and real["complex_dot_xla_flops"] == 0
    assert real["bytes"] == 3 * 8 * n**2


def test_bench_flops_are_the_mft_products_and_more(record):
    hardware = record["hardware"]
    engine, mft = hardware["engine"], hardware["mft_flops_per_exposure"]
    # The step's complex dots are exactly the MFTs' six products per wavelength.
    assert 4 * engine["complex_dot_xla_flops_per_exposure"] == pytest.approx(mft)
    # The rest (FFTs, ramp, likelihood) is O(m² log m) a wavelength, not O(m n²).
    assert mft < engine["flops_per_exposure"] < 3 * mft
    assert engine["bytes_per_exposure"] > 0
    assert engine["flops_per_byte"] == pytest.approx(
        engine["flops_per_exposure"] / engine["bytes_per_exposure"]
    )


def test_bench_engine_rate_against_the_machine(record):
    hardware, timings = record["hardware"], record["timings"]
    for name in ("matmul_complex128", "matmul_float64", "stream_float64"):
        assert timings[name]["median_s"] > 0
    peak, bandwidth = hardware["float64_matmul_gflop_per_s"], hardware["stream_bandwidth_gb_per_s"]
    assert hardware["complex128_matmul_gflop_per_s"] > 0 and peak > 0 and bandwidth > 0
    engine = hardware["engine"]
    flops = engine["flops_per_exposure"] * record["exposures"]
    assert engine["gflop_per_s"] == pytest.approx(flops / timings["engine"]["median_s"] / 1e9)
    assert engine["fraction_of_float64_matmul"] == pytest.approx(engine["gflop_per_s"] / peak)
    assert 0 < engine["fraction_of_float64_matmul"] < 1.5
    assert 0 < engine["fraction_of_complex128_matmul"] < 3  # complex matmuls run below float64
    roof = min(peak, engine["flops_per_byte"] * bandwidth)
    assert engine["roof_gflop_per_s"] == pytest.approx(roof)
    assert engine["bound"] == ("memory" if roof < peak else "arithmetic")
    assert engine["fraction_of_roof"] == pytest.approx(engine["gflop_per_s"] / roof)
    fraction = engine["fraction_of_float64_matmul"]
    assert hardware["target_met"] == (fraction >= hardware["target_fraction"])


def test_bench_rejects_a_fit_config(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "configs/io_test_fit.toml", "--out", str(out)]) == 2
    assert "kind: expected 'io'" in capsys.readouterr().err
    assert not out.exists()
