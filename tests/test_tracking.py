"""MLflow tracking: params, tags, batched metrics, failure status, read back via the client."""

import pytest
from mlflow.tracking import MlflowClient

from scaling.report.tracking import fit_run, flatten


@pytest.fixture
def uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


CONFIG = {"fit": {"steps": 3, "optimisers": {"log_flux": {"kind": "sgd", "lr": 0.5}}}, "seed": 1}


def test_flatten_nested_config():
    assert flatten(CONFIG) == {
        "fit.steps": "3",
        "fit.optimisers.log_flux.kind": "sgd",
        "fit.optimisers.log_flux.lr": "0.5",
        "seed": "1",
    }


def test_run_logs_params_tags_and_metrics(uri, tmp_path):
    with fit_run(CONFIG, run_name="t", uri=uri, tags={"campaign": "abc"}) as (run, metrics):
        for step in range(120):
            metrics.add(step, {"total": 100.0 - step, "nll": 90.0 - step})
        run_id = run.info.run_id
    client = MlflowClient(uri)
    got = client.get_run(run_id)
    assert got.info.status == "FINISHED"
    assert got.data.params["fit.optimisers.log_flux.kind"] == "sgd"
    assert got.data.tags["campaign"] == "abc"
    assert "version.jax" in got.data.tags
    history = client.get_metric_history(run_id, "total")
    assert [m.step for m in history] == list(range(120))
    assert history[-1].value == pytest.approx(100.0 - 119)


def test_failed_run_is_marked_with_its_error(uri):
    with pytest.raises(RuntimeError, match="boom"), fit_run(CONFIG, uri=uri) as (run, metrics):
        metrics.add(0, {"total": 1.0})
        run_id = run.info.run_id
        raise RuntimeError("boom")
    got = MlflowClient(uri).get_run(run_id)
    assert got.info.status == "FAILED"
    assert "boom" in got.data.tags["error"]
    assert len(MlflowClient(uri).get_metric_history(run_id, "total")) == 1


def test_resumed_run_continues_the_same_run(uri):
    with fit_run(CONFIG, uri=uri) as (run, metrics):
        metrics.add(0, {"total": 2.0})
        run_id = run.info.run_id
    with fit_run(CONFIG, uri=uri, run_id=run_id) as (run, metrics):
        metrics.add(1, {"total": 1.0})
        assert run.info.run_id == run_id
    history = MlflowClient(uri).get_metric_history(run_id, "total")
    assert [m.step for m in history] == [0, 1]
