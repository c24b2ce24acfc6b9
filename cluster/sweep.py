"""`scaling sweep SWEEP.toml [--resume]`: hyperparameter sweeps on Ray Tune.

Each trial is one fit (`scaling.fit.fit_campaign`) of the base fit config with the
trial's values of the search space, run in a Tune trial actor: in that process, or, with
`workers_per_trial` = W, on W Ray shard workers placed in the trial's own placement group
(one bundle for the trial's driver, W for its workers). Trials report the validation
NLL of held-out pixels (`scaling.fitting.validation`) at every checkpoint; an ASHA
scheduler stops poor trials there.

MLflow: one parent run for the sweep (its config, space, best trial and config, and the
`scaling compare` of its trials as artifacts); each trial a nested run with its own
params, metrics and pictures. Trials log concurrently, so with a file store (the
embedded SQLite default) the sweep starts a local tracking server on 127.0.0.1 in front
of it for its duration (`scaling.report.tracking.local_server`): one process writes the
file, and no metric is lost to a locked database.

A failing trial (a non-finite loss, a bad value) is FAILED in MLflow with its error and
the sweep goes on. `--resume` continues an interrupted sweep (Tune's experiment
restore): finished trials are kept, unfinished ones continue from their last checkpoint
in the same MLflow run.
"""

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from mlflow.entities import Param, RunStatus
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from cluster.coordinator import RayStepper, compile_cache, connect
from cluster.worker import configure_jax
from scaling.config import ClusterConfig, FitConfig, SweepConfig, config_to_dict, load_config
from scaling.config.load import override
from scaling.data.results import Results
from scaling.fit import fit_campaign
from scaling.fitting.validation import METRIC as VALIDATION
from scaling.report.compare import chosen_run, compare, find_runs
from scaling.report.tracking import EXPERIMENT, flatten, local_server, tracking_uri

DOMAINS = {
    "grid": tune.grid_search,
    "choice": tune.choice,
    "uniform": lambda v: tune.uniform(*v),
    "loguniform": lambda v: tune.loguniform(*v),
}
"""Sweep-config domain name → the Tune search-space object of its values."""

TUNE_FOLDER = "tune"
"""The Tune experiment's folder inside the sweep's (`out`/`name`)."""


@dataclass(frozen=True)
class TrialPlan:
    """What every trial needs: the base fit config (tracking URI and validation set),
    where trials keep their results stores, the parent run, the shard workers."""

    base: FitConfig
    trials_folder: str
    parent_run_id: str
    sweep_file: str


def trial_config(plan: TrialPlan, values: dict[str, Any], trial_id: str) -> FitConfig:
    """The base fit config with a trial's values, its own results store and run name."""
    return _as_trial(override(plan.base, values, plan.sweep_file), plan, trial_id)


def _as_trial(config: FitConfig, plan: TrialPlan, trial_id: str) -> FitConfig:
    results = str(Path(plan.trials_folder) / f"{trial_id}.zarr")
    tracking = dataclasses.replace(config.tracking, run_name=trial_id)
    return dataclasses.replace(config, results=results, tracking=tracking)


def run_trial(values: dict[str, Any], plan: TrialPlan) -> None:
    """One trial (in a Tune trial actor): a fit reporting the validation NLL at every
    checkpoint; a trial restarted after an interruption resumes its fit, or, if its run
    had ended (finished, or stopped by the scheduler) before Tune recorded it, reports
    where it ended without running again. A trial that fails before its fit's run
    begins (a value invalid for its key) gets a FAILED run."""
    trial_id = tune.get_context().get_trial_id()
    config = _as_trial(plan.base, plan, trial_id)
    try:
        config = trial_config(plan, values, trial_id)
        if _report_ended(config):
            return
        configure_jax(compile_cache(config.cluster))  # trials differ in values: one compile
        resume = Path(config.results).exists() and bool(
            Results.open(config.results).checkpoint_steps
        )
        if not resume:
            _drop_runs_of(config)

        def report(step: int, stepper) -> None:
            if step % config.checkpoint_every == 0 and step < config.steps:
                tune.report({"step": step, VALIDATION: stepper.validation_nll()})

        outcome = fit_campaign(
            config,
            resume=resume,
            progress=False,
            stepper=RayStepper if config.cluster.workers else None,
            callback=report,
            parent_run_id=plan.parent_run_id,
        )
    except Exception as error:
        if not _runs_of(config):
            _failed_run(config, values, plan.parent_run_id, error)
        raise
    # The last report comes after the fit has saved and closed its run: Tune ends a
    # trial that reaches the end at its report.
    tune.report({"step": config.steps, VALIDATION: outcome.validation_nll})


def _report_ended(config: FitConfig) -> bool:
    """Report the end of the trial's run to Tune if it has one that ended; whether so."""
    ended = [r for r in _runs_of(config) if r.info.status in ("FINISHED", "KILLED")]
    if not ended:
        return False
    run = ended[0]
    history = MlflowClient(config.tracking.uri).get_metric_history(run.info.run_id, VALIDATION)
    last = max(history, key=lambda m: m.step, default=None)
    step = config.steps if run.info.status == "FINISHED" else (last.step if last else 0)
    tune.report({"step": step, VALIDATION: last.value if last else math.nan})
    return True


def _runs_of(config: FitConfig) -> list:
    """MLflow runs of the trial whose results store `config.results` names."""
    client = MlflowClient(config.tracking.uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], f"tags.results = '{config.results}'")


def _failed_run(config: FitConfig, values: dict, parent: str, error: Exception) -> None:
    """A FAILED nested run holding the trial's config, its values and its error."""
    client = MlflowClient(config.tracking.uri)
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    tags = {
        "mlflow.parentRunId": parent,
        "results": config.results,
        "error": f"{type(error).__name__}: {error}"[:5000],
    }
    run = client.create_run(experiment, run_name=config.tracking.run_name, tags=tags)
    params = flatten(config_to_dict(config)) | {k: str(v) for k, v in values.items()}
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
    client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FAILED))


def _drop_runs_of(config: FitConfig) -> None:
    """Delete MLflow runs left by an earlier start of this trial that wrote no checkpoint
    (it starts again from step 0, in a new run)."""
    client = MlflowClient(config.tracking.uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return
    for run in client.search_runs([experiment.experiment_id], f"tags.results = '{config.results}'"):
        client.delete_run(run.info.run_id)


def _space(sweep: SweepConfig) -> dict[str, Any]:
    return {
        key: DOMAINS[kind](list(values))
        for key, domain in sweep.space.items()
        for kind, values in domain.items()
    }


def _resources(sweep: SweepConfig) -> tune.PlacementGroupFactory:
    """One bundle for the trial's driver (and its fit, without workers), one per worker."""
    workers = [{"CPU": sweep.cpus_per_worker}] * sweep.workers_per_trial
    return tune.PlacementGroupFactory([{"CPU": 1.0}, *workers])


def _scheduler(sweep: SweepConfig, steps: int):
    if sweep.scheduler == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="step",
        max_t=steps,
        grace_period=min(sweep.grace_period, steps),
        reduction_factor=sweep.reduction_factor,
    )


def _absolute(location: str) -> str:
    """A local path made absolute (trials run in their own folders); URLs and "" kept."""
    return location if not location or "://" in location else str(Path(location).resolve())


def base_config(sweep: SweepConfig, sweep_file: str, uri: str) -> FitConfig:
    """The sweep's base fit config: validation pixels held out (the sweep's share if the
    config holds none out), MLflow at `uri`, shard workers as the sweep asks; every key
    of the space checked against it with a value from its domain."""
    base = load_config(sweep.fit)
    if not isinstance(base, FitConfig):
        raise ValueError(f"{sweep_file}: fit: {sweep.fit} is a {base.KIND!r} config, not a fit")
    cluster = dataclasses.replace(
        base.cluster, workers=sweep.workers_per_trial, cpus_per_worker=sweep.cpus_per_worker
    )
    base = dataclasses.replace(
        base,
        campaign=_absolute(base.campaign),
        truth=_absolute(base.truth),
        calibration=_absolute(base.calibration),
        validation_fraction=base.validation_fraction or sweep.validation_fraction,
        tracking=dataclasses.replace(base.tracking, uri=uri),
        cluster=cluster,
    )
    for key, domain in sweep.space.items():
        override(base, {key: next(iter(domain.values()))[0]}, sweep_file)
    return base


def _parent_run(client: MlflowClient, sweep: SweepConfig, root: Path, resume: bool) -> str:
    """The sweep's parent run: the unfinished one of this folder on resume, else new."""
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    if resume:
        found = client.search_runs(
            [experiment], f"tags.sweep = '{root}'", order_by=["attributes.start_time DESC"]
        )
        if found:
            client.update_run(found[0].info.run_id, status="RUNNING")
            return found[0].info.run_id
    run = client.create_run(experiment, run_name=sweep.name, tags={"sweep": str(root)})
    params = flatten({k: v for k, v in config_to_dict(sweep).items() if k != "space"})
    params |= {f"space.{k}": json.dumps(v) for k, v in config_to_dict(sweep)["space"].items()}
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
    return run.info.run_id


@dataclass
class SweepOutcome:
    """What a sweep produced: its parent run, the trials' nested runs, the best one."""

    parent_run_id: str
    trials: dict[str, str]
    best_trial: str | None
    best_config: dict[str, Any] | None


def run_sweep(path: str, resume: bool = False, verbose: int = 1) -> SweepOutcome:
    """Run (or resume) the sweep of the config file `path` (module docstring)."""
    sweep = load_config(path)
    if not isinstance(sweep, SweepConfig):
        raise ValueError(f"{path}: kind: expected 'sweep', got {sweep.KIND!r}")
    root = (Path(sweep.out) / sweep.name).resolve()
    tune_dir = root / TUNE_FOLDER
    if resume and not tune.Tuner.can_restore(str(tune_dir)):
        raise ValueError(f"{path}: --resume: no interrupted sweep in {tune_dir}")
    uri = tracking_uri(load_config(sweep.fit).tracking.uri)
    if uri.startswith(("http://", "https://")):
        return _run(sweep, path, root, uri, resume, verbose)
    with local_server(uri) as server:
        return _run(sweep, path, root, server, resume, verbose)


def _run(sweep, path, root, uri, resume, verbose) -> SweepOutcome:
    client = MlflowClient(uri)
    base = base_config(sweep, path, uri)
    parent = _parent_run(client, sweep, root, resume)
    plan = TrialPlan(base, str(root / "trials"), parent, path)
    per_trial = 1 + sweep.workers_per_trial * sweep.cpus_per_worker
    owns_ray = connect(
        ClusterConfig(workers=sweep.concurrent, address=sweep.address, cpus_per_worker=per_trial)
    )
    try:
        trainable = tune.with_parameters(run_trial, plan=plan)
        trainable = tune.with_resources(trainable, _resources(sweep))
        tune_dir = root / TUNE_FOLDER
        if resume:
            tuner = tune.Tuner.restore(str(tune_dir), trainable, resume_errored=False)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=_space(sweep),
                tune_config=tune.TuneConfig(
                    metric=sweep.metric,
                    mode=sweep.mode,
                    num_samples=sweep.samples,
                    max_concurrent_trials=sweep.concurrent,
                    scheduler=_scheduler(sweep, base.steps),
                ),
                run_config=tune.RunConfig(
                    name=tune_dir.name,
                    storage_path=str(root),
                    failure_config=tune.FailureConfig(max_failures=0),
                    verbose=verbose,
                ),
            )
        tuner.fit()
        outcome = _conclude(client, sweep, plan, root)
    except BaseException as error:
        client.set_tag(parent, "error", f"{type(error).__name__}: {error}"[:5000])
        client.set_terminated(parent, RunStatus.to_string(RunStatus.FAILED))
        raise
    finally:
        if owns_ray:
            ray.shutdown()
    client.set_terminated(parent, "FINISHED")
    return outcome


def _conclude(client: MlflowClient, sweep: SweepConfig, plan: TrialPlan, root: Path):
    """From the trials' nested runs: tag the early-stopped ones, put the best trial and
    its values and the comparison of all on the parent run."""
    parent = plan.parent_run_id
    runs = find_runs(client, parent=parent, missing_ok=True)
    trials = {Path(r.results).stem: r for r in runs}
    for run in runs:
        if run.status in ("KILLED", "RUNNING"):  # stopped by the scheduler
            client.set_tag(run.run_id, "stopped_early", sweep.scheduler)
            client.set_terminated(run.run_id, RunStatus.to_string(RunStatus.KILLED))
    runs = find_runs(client, parent=parent, missing_ok=True)
    best = chosen_run(runs, sweep.metric, sweep.mode)
    values = None
    if best is not None:
        values = {key: float(best.params[key]) for key in sweep.space}
        client.set_tag(parent, "best.trial", Path(best.results).stem)
        client.set_tag(parent, "best.run_id", best.run_id)
        client.log_metric(parent, f"best.{sweep.metric}", best.metrics[sweep.metric])
        record = {"trial": Path(best.results).stem, "run_id": best.run_id, "values": values}
        client.log_dict(parent, record, "best_config.json")
    if runs:
        compare(runs, root / "compare")
        client.log_artifacts(parent, str(root / "compare"), "compare")
    best_trial = Path(best.results).stem if best else None
    return SweepOutcome(parent, {t: r.run_id for t, r in trials.items()}, best_trial, values)


def sweep_command(args: argparse.Namespace) -> int:
    """Run `scaling sweep`; returns 0 (bad input raises: `scaling.cli.main` reports it)."""
    outcome = run_sweep(str(args.config), args.resume, verbose=0 if args.quiet else 1)
    print(f"sweep: {len(outcome.trials)} trials under MLflow run {outcome.parent_run_id}")
    if outcome.best_trial:
        print(f"best:  {outcome.best_trial} {json.dumps(outcome.best_config)}")
    return 0
