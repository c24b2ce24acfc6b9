"""`scaling fit`: a campaign store in, a results store and an MLflow run out.

Single process: all exposures are read into this process and batched with vmap (the
cluster layer runs the same engine step on shards). Checkpoints go to the results store
every `checkpoint_every` steps; `resume=True` continues from the latest one and continues
the MLflow run that wrote it (found by its `results` tag).
"""

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import jax
import jax.numpy as jnp
import mlflow
import numpy as np
from jaxtyping import PyTree
from tqdm.auto import tqdm

from model import ExposureModel, ami_model, make_spec, nominal_detector
from model.source import normalise_log_image
from scaling.config import FitConfig, config_to_dict
from scaling.engine import FitResult, FitSettings, join, make_fitter, renormalise_images, split
from scaling.export import export_fits
from scaling.fit_plots import residual_maps, write_fit_pictures
from scaling.objective import chi_squared_sums
from scaling.optimisers import OptimiserSpec
from scaling.partition import Observation, make_batches
from scaling.quasi_newton import lbfgs_refine
from scaling.results import EpochImage, Results
from scaling.store import Campaign
from scaling.tracking import fit_run, tracking_uri
from scaling.truth import truth_comparison


def load_observations(campaign: Campaign, names) -> list[Observation]:
    """Observations of the named exposures, read from the store (float64, bool masks)."""
    records = campaign.read(names)
    observations = []
    for name in names:
        info, rec = campaign.info(name), records[name]
        spec = make_spec(
            info.filter,
            rec.slope.shape[0] + 1,
            roll=info.roll,
            group_time=info.group_time,
            nints=info.nints,
            dither=(info.dither_x, info.dither_y),
        )
        observations.append(Observation(name, info.epoch, spec, rec.slope, rec.badpix))
    return observations


def build_model(config: FitConfig, filters) -> ExposureModel:
    """The AMI model at the config's sizes for the campaign's filters."""
    i = config.instrument
    return ami_model(i.npix, i.oversample, i.pupil_npix, i.nwavels, i.n_hole_zernikes, filters)


def initial_shared(config: FitConfig, model: ExposureModel) -> dict:
    """Starting shared parameters: nominal detector, no aberration (float64)."""
    nterms = model.optics.pupil.basis.shape[0]
    shared = nominal_detector(model.npix)
    shared["jitter"] = jnp.asarray(config.jitter)
    shared["read_noise"] = jnp.asarray(config.read_noise)
    shared["aberrations"] = {f: jnp.zeros(nterms) for f in sorted(model.bandpasses)}
    return jax.tree.map(lambda x: jnp.asarray(x, dtype=jnp.float64), shared)


def initial_local(config: FitConfig, observations: list[Observation], n_epochs: int) -> dict:
    """Starting local parameters: centred sources, flat images (float64).

    Each exposure's flux starts at its measured count rate (good pixels, mean slope).
    """
    rates = [
        np.sum(np.where(o.bad, 0.0, o.slopes).mean(axis=0)) / float(o.spec.group_time)
        for o in observations
    ]
    n = len(observations)
    exposure = {
        "position": jnp.zeros((n, 2)),
        "log_flux": jnp.log10(jnp.asarray(rates)),
        "spectral_slope": jnp.zeros(n),
    }
    images = jnp.zeros((n_epochs, config.image_npix, config.image_npix))
    local = {"epoch": {"log_image": images}, "exposure": exposure}
    return jax.tree.map(lambda x: jnp.asarray(x, dtype=jnp.float64), local)


def initial_params(
    config: FitConfig, model: ExposureModel, observations: list[Observation], epochs: list[str]
) -> dict:
    """Starting point of a single-process fit (`initial_shared` and `initial_local`)."""
    return join(
        {"shared": initial_shared(config, model)},
        initial_local(config, observations, len(epochs)),
    )


def freeze_science_positions(observations: list[Observation]):
    """Gradient hook freezing the position of the first exposure of each epoch.

    That exposure's pointing is carried by the epoch image (as in the seed notebook,
    where an image belongs to one exposure); the other exposures of the epoch fit their
    pointing relative to it, which one image cannot carry for all of them. Calibrator
    positions stay free. `observations` must hold whole epochs (as a shard does).
    """
    firsts = {}
    for i, o in enumerate(observations):
        if o.epoch is not None:
            firsts.setdefault(o.epoch, i)
    frozen = set(firsts.values())
    free = jnp.asarray([[0.0] if i in frozen else [1.0] for i in range(len(observations))])

    def hook(grads, params):
        if "exposure" not in grads or "position" not in grads["exposure"]:
            return grads
        exposure = {**grads["exposure"], "position": grads["exposure"]["position"] * free}
        return {**grads, "exposure": exposure}

    return hook


def settings_from(config: FitConfig, observations: list[Observation]) -> FitSettings:
    """Engine settings of a fit config."""
    specs = {
        name: OptimiserSpec(o.kind, o.lr, o.start, o.precondition)
        for name, o in config.optimisers.items()
    }
    return FitSettings(
        specs,
        dict(config.regularisers),
        config.diagonal,
        grad_hook=freeze_science_positions(observations),
    )


@dataclass
class FitOutcome:
    """What a fit produced."""

    run_id: str
    params: dict
    history: dict[str, np.ndarray]
    reduced_chi2: float
    step: int
    truth_metrics: dict[str, float]


class WorkerLost(RuntimeError):
    """A worker of a distributed fit died; the fit rolls back to its last checkpoint."""


class Stepper(Protocol):
    """What runs the steps of a fit: this process (`InProcess`) or a Ray cluster.

    Parameters it returns are laid out as in a single process: exposures in campaign
    order, epochs sorted by name.
    """

    def step(self) -> dict[str, float]:
        """One step; the loss terms at the parameters before it (floats)."""

    def checkpoint(self) -> dict[str, PyTree]:
        """Trees of a checkpoint: every parameter and optimiser state."""

    def restore(self, results: Results, step: int | None = None) -> int:
        """Load the checkpoint at `step` (default: latest) from `results`; its step."""

    def reset(self) -> None:
        """Back to the starting parameters and fresh optimiser states (step 0)."""

    def params(self) -> dict:
        """All current parameters."""

    def chi_squared(self) -> tuple[float, float]:
        """(Σ χ², Σ measurements) at the current parameters."""

    def residual_maps(self) -> dict[str, np.ndarray]:
        """Exposure name → (p, p) mean whitened residual (NaN on bad pixels)."""

    def refine(self, names, steps: int, memory: int) -> list[float]:
        """The quasi-Newton stage on parameters `names`; the loss before each iteration."""

    def close(self) -> None:
        """Release what the stepper holds (processes, devices)."""


StepperFactory = Callable[[FitConfig, Campaign, ExposureModel, list[str]], Stepper]
"""Builds a stepper from (config, campaign, model, epoch names)."""


class InProcess:
    """Every exposure in this process, batched with vmap: the engine's reference."""

    def __init__(
        self, config: FitConfig, campaign: Campaign, model: ExposureModel, epochs: list[str]
    ):
        self.model, self.epochs = model, epochs
        self.observations = load_observations(campaign, campaign.names)
        self.batches = make_batches(self.observations, list(campaign.names), epochs)
        self.initial = initial_params(config, model, self.observations, epochs)
        settings = settings_from(config, self.observations)
        self.fitter = make_fitter(model, self.initial, self.batches, settings)
        self.reset()

    def reset(self) -> None:
        shared, local = split(self.initial)
        self._params = join(shared, renormalise_images(local))
        self._state = self.fitter.init(self._params)

    def step(self) -> dict[str, float]:
        self._params, self._state, terms = self.fitter.step(self._params, self._state, self.batches)
        return terms

    def checkpoint(self) -> dict[str, PyTree]:
        return {"params": self._params, "state": self._state}

    def restore(self, results: Results, step: int | None = None) -> int:
        step, trees = results.read_checkpoint(self.checkpoint(), step)
        self._params, self._state = jax.tree.map(jnp.asarray, (trees["params"], trees["state"]))
        return step

    def params(self) -> dict:
        return self._params

    def chi_squared(self) -> tuple[float, float]:
        chi2, count = chi_squared_sums(self.model, self._params, self.batches)
        return float(chi2), float(count)

    def residual_maps(self) -> dict[str, np.ndarray]:
        return residual_maps(self.model, self._params, self.observations, self.epochs)

    def refine(self, names, steps: int, memory: int) -> list[float]:
        settings = self.fitter.settings
        self._params, totals = lbfgs_refine(
            self.model,
            self._params,
            self.batches,
            names,
            steps,
            settings.reg_weights,
            settings.diagonal,
            memory,
        )
        return totals

    def close(self) -> None:
        pass


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
) -> FitOutcome:
    """Fit the campaign store named by `config` (see the module docstring).

    `stepper` builds what runs the steps (default `InProcess`; `cluster` passes a Ray
    one); `callback(step, stepper)` runs after every step. The fit's pictures are logged
    to MLflow and, with `pictures`, also kept in that folder.
    """
    campaign = Campaign.open(config.campaign)
    epochs = sorted(campaign.epochs)
    model = build_model(config, sorted({campaign.info(n).filter for n in campaign.names}))
    runner = (stepper or InProcess)(config, campaign, model, epochs)
    try:
        return _fit(config, runner, campaign, model, epochs, resume, progress, pictures, callback)
    finally:
        runner.close()


def _fit(config, stepper, campaign, model, epochs, resume, progress, pictures, callback):
    if resume:
        results = Results.open(config.results, writable=True)
        start = stepper.restore(results)
        run_id = _previous_run(config.results, config.tracking.uri)
    else:
        results = Results.create(config.results, overwrite=True)
        start, run_id = 0, None
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
        tags=tags,
    ) as (active, metrics):
        history = _steps(config, stepper, results, metrics, start, progress, callback)
        qn = config.quasi_newton
        if qn.steps:
            totals = stepper.refine(qn.parameters, qn.steps, qn.memory)
            history["lbfgs_total"] = np.asarray(totals)
            for i, total in enumerate(totals):
                metrics.add(config.steps + i + 1, {"lbfgs_total": total})
        result = FitResult(stepper.params(), None, history, config.steps)
        chi2_sum, count = stepper.chi_squared()
        chi2 = chi2_sum / count
        mlflow.log_metric("reduced_chi2", chi2, step=result.step)
        truth_metrics = (
            truth_comparison(config.truth, model, result, epochs) if config.truth else {}
        )
        mlflow.log_metrics(truth_metrics, step=result.step)
        _save(results, model, result, campaign, epochs, list(campaign.names))
        _log_artifacts(config, model, result, stepper.residual_maps(), epochs, pictures)
        return FitOutcome(
            active.info.run_id, result.params, result.history, chi2, result.step, truth_metrics
        )


def _steps(config, stepper, results, metrics, start, progress, callback) -> dict[str, np.ndarray]:
    """Steps `start` → `config.steps` with checkpoints; a worker lost in a step or a
    checkpoint rolls back to the last checkpoint (or step 0), at most
    `config.cluster.max_restarts` times."""
    history: dict[str, list[float]] = {}
    restarts, step = 0, start
    bar = tqdm(total=config.steps, initial=start, disable=not progress, desc="fit")
    clock = time.perf_counter()
    while step < config.steps:
        try:
            terms = stepper.step()
            if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
                results.write_checkpoint(step + 1, stepper.checkpoint(), keep=2)
        except WorkerLost as lost:
            restarts += 1
            if restarts > config.cluster.max_restarts:
                raise
            if results.checkpoint_steps:
                step = stepper.restore(results)
            else:
                stepper.reset()
                step = 0
            history = {k: v[: max(step - start, 0)] for k, v in history.items()}
            mlflow.set_tag("restarts", str(restarts))
            tqdm.write(f"fit: {lost}; rolled back to step {step}")
            bar.reset(total=config.steps)
            bar.update(step)
            clock = time.perf_counter()
            continue
        step += 1
        now = time.perf_counter()
        terms["step_time"], clock = now - clock, now
        for k, v in terms.items():
            history.setdefault(k, []).append(v)
        metrics.add(step, terms)
        bar.update(1)
        bar.set_postfix(loss=f"{terms['total']:.6g}")
        if callback is not None:
            callback(step, stepper)
    bar.close()
    return {k: np.asarray(v) for k, v in history.items()}


def _save(results: Results, model, result, campaign: Campaign, epochs, names) -> None:
    pixel_scale = model.optics.psf_pixel_scale
    images = []
    for i, epoch in enumerate(epochs):
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


def _log_artifacts(config, model, result, residuals, epochs, pictures) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        export_fits(config.results, folder / "fits")
        mlflow.log_artifacts(str(folder / "fits"), "fits")
        pictures = write_fit_pictures(
            pictures or folder / "pictures", model, result, residuals, epochs, config.truth or None
        )
        mlflow.log_artifacts(str(pictures), "pictures")
