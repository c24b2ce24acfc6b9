"""`scaling compare`: image grids, differences, metrics tables and regularisation curves
of fit runs, from one real fit of the tiny campaign (its run and results store)."""

import csv
import dataclasses

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from scaling.cli import main
from scaling.config import load_config
from scaling.fit import fit_campaign
from scaling.report.compare import (
    RunSummary,
    chosen_run,
    compare,
    find_runs,
    regulariser_weight,
    varying_params,
)

from .campaigns import simulated_campaign

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One 2-step fit of the tiny simulated campaign, 5% of its pixels held out for
    validation → (tracking URI, its RunSummary)."""
    root = tmp_path_factory.mktemp("compare")
    sim = simulated_campaign("configs/io_test.toml", root)
    base = load_config("configs/io_test_fit.toml")
    config = dataclasses.replace(
        base,
        campaign=str(root / "campaign.zarr"),
        results=str(root / "results.zarr"),
        truth=str(sim),
        steps=2,
        validation_fraction=0.05,
        tracking=dataclasses.replace(base.tracking, uri=f"sqlite:///{root / 'mlflow.db'}"),
    )
    outcome = fit_campaign(config, progress=False)
    client = MlflowClient(config.tracking.uri)
    return config.tracking.uri, find_runs(client, [outcome.run_id])[0]


def sweep_of(run: RunSummary, weights, validation) -> list[RunSummary]:
    """Runs like `run` (same results store) with other TV weights and metrics."""
    return [
        dataclasses.replace(
            run,
            run_id=f"{i:032x}",
            name=f"tv={w}",
            params={**run.params, "regularisers.tv": str(w)},
            metrics={**run.metrics, "regulariser": 2.0 / (1 + i) * w, "validation_nll": v},
        )
        for i, (w, v) in enumerate(zip(weights, validation, strict=True))
    ]


def test_compare_cli_writes_grid_differences_and_table(run, tmp_path):
    uri, summary = run
    out = tmp_path / "compare"
    assert main(["compare", summary.run_id, "--out", str(out), "--tracking-uri", uri]) == 0
    assert {p.name for p in out.iterdir()} == {
        "images.png", "differences.png", "metrics.md", "metrics.csv"
    }  # fmt: skip
    with Image.open(out / "images.png") as picture:
        width, height = picture.size
    assert width > height  # two columns (truth, the run) by two epochs
    with open(out / "metrics.csv") as table:
        rows = list(csv.DictReader(table))
    assert [r["run"] for r in rows] == [summary.run_id]
    history = MlflowClient(uri).get_metric_history(summary.run_id, "validation_nll")
    assert [m.step for m in history] == [2]
    assert float(rows[0]["validation_nll"]) == pytest.approx(history[0].value, rel=1e-5)
    assert float(rows[0]["mean_ncc"]) == pytest.approx(
        np.mean([v for k, v in summary.metrics.items() if k.startswith("ncc.")]), rel=1e-5
    )


def test_sweep_over_one_weight_gets_an_lcurve_and_the_validation_choice(run, tmp_path):
    _, summary = run
    runs = sweep_of(summary, [0.1, 1.0, 10.0], [5.0, 3.0, 4.0])
    assert varying_params(runs) == ["regularisers.tv"]
    assert regulariser_weight(runs) == "tv"
    assert chosen_run(runs).name == "tv=1.0"
    files = {p.name for p in compare(runs, tmp_path / "sweep", reference=runs[1].run_id)}
    assert {"lcurve.png", "validation.png", "differences.png"} <= files
    table = (tmp_path / "sweep" / "metrics.md").read_text().splitlines()
    assert table[0].startswith("| run | name | status | regularisers.tv |")
    assert len(table) == 2 + 3


def test_failed_trials_are_never_chosen(run):
    _, summary = run
    runs = sweep_of(summary, [0.1, 1.0], [1.0, 2.0])
    runs[0] = dataclasses.replace(runs[0], status="FAILED")
    assert chosen_run(runs).name == "tv=1.0"


def test_bad_requests_fail_with_one_line_and_leave_the_folder(run, tmp_path, capsys):
    uri, summary = run
    out = tmp_path / "kept"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = ["compare", summary.run_id, "--out", str(out), "--tracking-uri", uri]
    assert main(args) == 2
    assert "holds no metrics.csv" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"
    assert main(["compare", "0" * 32, "--out", str(tmp_path / "x"), "--tracking-uri", uri]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["compare", "--out", str(tmp_path / "y"), "--tracking-uri", uri]) == 2
    assert "one of them" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
