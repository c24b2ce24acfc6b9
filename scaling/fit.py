"""`scaling fit`: a campaign store in, a results store and an MLflow run out.

Single process: all exposures are read into this process and batched with vmap (the
cluster layer runs the same engine step on shards). Checkpoints go to the results store
every `checkpoint_every` steps, with the loss history so far, and the buffered MLflow
metrics are flushed with each. `resume=True` continues from the latest checkpoint and
continues the MLflow run that wrote it (found by its `results` tag), sending the metrics
of earlier steps that the run lacks: a fit whose driver was killed between checkpoints
ends with the same MLflow metric history (every step once) and the same results-store
loss history as an uninterrupted one. The seconds each checkpoint took (gathering the
parameters and optimiser states from the stepper, writing them) are logged as
`checkpoint_time` at its step.
"""

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
from tqdm.auto import tqdm

from model.source import normalise_log_image
from scaling.config import FitConfig, config_to_dict
from scaling.data.export import export_fits
from scaling.data.results import EpochImage, Results
from scaling.data.store import Campaign
from scaling.fitting.engine import FitResult
from scaling.fitting.start import open_selection
from scaling.fitting.stepper import InProcess, Stepper, StepperFactory, WorkerLost
from scaling.fitting.validation import METRIC as VALIDATION
from scaling.report.fit_plots import write_fit_pictures
from scaling.report.flatfield import flatfield_comparison, is_star_field, write_flatfield_pictures
from scaling.report.tracking import fit_run, tracking_uri
from scaling.report.truth import truth_comparison

CHECKPOINT_TIME = "checkpoint_time"
"""Metric: seconds to gather and write the checkpoint of that step."""


@dataclass
class FitOutcome:
    """What a fit produced (`validation_nll`: NaN when no pixels were held out;
    `checkpoint_seconds`: the time of each checkpoint this run wrote, in order)."""

    run_id: str
    params: dict
    history: dict[str, np.ndarray]
    reduced_chi2: float
    step: int
    truth_metrics: dict[str, float]
    validation_nll: float
    checkpoint_seconds: list[float]


def _previous_run(results: str, uri: str) -> str | None:
    mlflow.set_tracking_uri(tracking_uri(uri))
    runs = mlflow.search_runs(
        experiment_names=["ami-scaling"],
        filter_string=f"tags.results = '{results}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    return runs[0].info.run_id if runs else None


def fit_campaign(
    config: FitConfig,
    resume: bool = False,
    progress: bool = True,
    pictures: Path | None = None,
    stepper: StepperFactory | None = None,
    callback: Callable[[int, Stepper], None] | None = None,
    parent_run_id: str | None = None,
) -> FitOutcome:
    """Fit the exposures of the campaign store that `config` selects (see the module
    docstring and `scaling.fitting.start.open_selection`).

    `stepper` builds what runs the steps (default `InProcess`; `cluster` passes a Ray
    one); `callback(step, stepper)` runs after every step. The fit's pictures are logged
    to MLflow and, with `pictures`, also kept in that folder. With `parent_run_id` the
    run is nested under that one (a sweep's trial).
    """
    campaign = open_selection(config)
    epochs = sorted(campaign.epochs)
    model = config.instrument.build(sorted({campaign.info(n).filter for n in campaign.names}))
    runner = (stepper or InProcess)(config, campaign, model, epochs)
    try:
        return _fit(
            config, runner, campaign, model, epochs, resume, progress, pictures, callback,
            parent_run_id,
        )  # fmt: skip
    finally:
        runner.close()


def _fit(
    config, stepper, campaign, model, epochs, resume, progress, pictures, callback, parent_run_id
):
    if resume:
        results = Results.open(config.results, writable=True)
        start = stepper.restore(results)
        history = results.read_checkpoint({"history": None}, start)[1]["history"]
        run_id = _previous_run(config.results, config.tracking.uri)
    else:
        results = Results.create(config.results, overwrite=True)
        start, history, run_id = 0, {}, None
    tags = {
        "results": config.results,
        "campaign": config.campaign,
        "campaign.digest": campaign.digest,
        "campaign.exposures": str(len(campaign.names)),
    }
    with fit_run(
        config_to_dict(config),
        config.tracking.run_name or None,
        config.tracking.uri,
        run_id,
        parent_run_id,
        tags=tags,
    ) as (active, metrics):
        mlflow.set_tags(stepper.placement_tags())
        if run_id:
            metrics.catch_up(history, others=[VALIDATION, CHECKPOINT_TIME])
        checkpoints: list[float] = []
        history = _steps(
            config, stepper, results, metrics, start, history, progress, callback, checkpoints
        )
        qn = config.quasi_newton
        if qn.steps:
            totals = stepper.refine(qn.parameters, qn.steps, qn.memory, qn.tolerance)
            history["lbfgs_total"] = np.asarray(totals)
            for i, total in enumerate(totals):
                metrics.add(config.steps + i + 1, {"lbfgs_total": total})
        result = FitResult(stepper.params(), None, history, config.steps)
        chi2_sum, count = stepper.chi_squared()
        chi2 = chi2_sum / count
        mlflow.log_metric("reduced_chi2", chi2, step=result.step)
        names = list(campaign.names)
        truth_metrics = _truth_metrics(config, model, result, epochs, names)
        mlflow.log_metrics(truth_metrics, step=result.step)
        _save(results, model, result, campaign, epochs, names)
        _log_artifacts(config, model, result, stepper.residual_maps(), epochs, names, pictures)
        return FitOutcome(
            active.info.run_id,
            result.params,
            result.history,
            chi2,
            result.step,
            truth_metrics,
            stepper.validation_nll(),
            checkpoints,
        )


def _truth_metrics(config, model, result, epochs, names) -> dict[str, float]:
    """How the fit of the exposures `names` compares with the simulation's truth ({}
    without one)."""
    if not config.truth:
        return {}
    if is_star_field(config.truth):
        return flatfield_comparison(config.truth, model, result.params)
    return truth_comparison(config.truth, model, result, epochs, names)


def _steps(
    config, stepper, results, metrics, start, history, progress, callback, checkpoints
) -> dict[str, np.ndarray]:
    """Steps `start` → `config.steps` after `history` (name → values of steps 1…start)
    with checkpoints, whose seconds are appended to `checkpoints`; a worker lost in a
    step or a checkpoint rolls back to the last checkpoint (or step 0), at most
    `config.cluster.max_restarts` times."""
    history = {k: list(v) for k, v in history.items()}
    restarts, step = 0, start
    bar = tqdm(total=config.steps, initial=start, disable=not progress, desc="fit")
    while step < config.steps:
        due = (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps
        try:
            if step in config.fisher_refresh:
                stepper.rescale()
            began = time.perf_counter()
            terms = stepper.step()
            gathering = time.perf_counter()
            seconds = gathering - began
            trees = stepper.checkpoint() if due else None
            gathered = time.perf_counter() - gathering
        except WorkerLost as lost:
            restarts += 1
            if restarts > config.cluster.max_restarts:
                raise
            if results.checkpoint_steps:
                step = stepper.restore(results)
            else:
                stepper.reset()
                step = 0
            history = {k: v[:step] for k, v in history.items()}
            metrics.rewind(step)
            mlflow.set_tag("restarts", str(restarts))
            tqdm.write(f"fit: {lost}; rolled back to step {step}")
            bar.reset(total=config.steps)
            bar.update(step)
            continue
        step += 1
        if not math.isfinite(terms["total"]):
            raise FloatingPointError(
                f"step {step}: the loss is {terms['total']} (diverged: lower a learning rate)"
            )
        terms.setdefault("step_time", seconds)  # a stepper of blocks gives each step's share
        for k, v in terms.items():
            history.setdefault(k, []).append(v)
        metrics.add(step, terms)
        if due:
            if config.validation_fraction:
                metrics.add(step, {VALIDATION: stepper.validation_nll()})
            writing = time.perf_counter()
            results.write_checkpoint(step, {**trees, "history": _arrays(history)}, keep=2)
            checkpoints.append(gathered + time.perf_counter() - writing)
            metrics.add(step, {CHECKPOINT_TIME: checkpoints[-1]})
            metrics.flush()
        bar.update(1)
        bar.set_postfix(loss=f"{terms['total']:.6g}")
        if callback is not None:
            callback(step, stepper)
    bar.close()
    return _arrays(history)


def _arrays(history: dict[str, list[float]]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, dtype=np.float64) for k, v in history.items()}


def _save(results: Results, model, result, campaign: Campaign, epochs, names) -> None:
    pixel_scale = model.optics.psf_pixel_scale
    images = []
    for i, epoch in enumerate(epochs if "log_image" in result.params["epoch"] else []):
        members = [campaign.info(n) for n in campaign.epochs[epoch]]
        image = np.asarray(normalise_log_image(result.params["epoch"]["log_image"][i]))
        images.append(
            EpochImage(
                epoch,
                image,
                pixel_scale,
                target=members[0].target,
                mjd=float(np.mean([m.expmid for m in members])),
                ra=members[0].target_ra,
                dec=members[0].target_dec,
                unit="fraction of total flux",
            )
        )
    results.save(
        result.step,
        images=images,
        shared=result.params["shared"],
        exposure=result.params["exposure"],
        exposure_names=names,
        loss=result.history.get("total", np.zeros(0)),
    )


def _log_artifacts(config, model, result, residuals, epochs, names, pictures) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        export_fits(config.results, folder / "fits")
        mlflow.log_artifacts(str(folder / "fits"), "fits")
        pictures = write_fit_pictures(
            pictures or folder / "pictures",
            model,
            result,
            residuals,
            epochs,
            config.truth or None,
            names,
        )
        if config.truth and is_star_field(config.truth):
            write_flatfield_pictures(pictures, model, result.params, config.truth)
        mlflow.log_artifacts(str(pictures), "pictures")
