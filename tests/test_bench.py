"""`scaling bench` on the tiny test campaign: the JSON record and what it must hold."""

import json
import math

import pytest

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


def test_bench_rejects_a_fit_config(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "configs/io_test_fit.toml", "--out", str(out)]) == 2
    assert "kind: expected 'io'" in capsys.readouterr().err
    assert not out.exists()
