"""`scaling fit`: a campaign store in, a results store and an MLflow run out.

Single process: all exposures are read into this process and batched with vmap (the
cluster layer runs the same engine step on shards). Checkpoints go to the results store
every `checkpoint_every` steps; `resume=True` continues from the latest one and continues
the MLflow run that wrote it (found by its `results` tag).
"""

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import mlflow
import numpy as np

from model import ExposureModel, ami_model, make_spec, nominal_detector
from model.source import normalise_log_image
from scaling.config import FitConfig, config_to_dict
from scaling.engine import FitSettings, make_fitter, run
from scaling.export import export_fits
from scaling.objective import reduced_chi_squared
from scaling.optimisers import OptimiserSpec
from scaling.partition import Observation, make_batches
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


def initial_params(
    config: FitConfig, model: ExposureModel, observations: list[Observation], epochs: list[str]
) -> dict:
    """Starting point: nominal detector, no aberration, centred sources, flat images.

    Each exposure's flux starts at its measured count rate (good pixels, mean slope).
    """
    nterms = model.optics.pupil.basis.shape[0]
    shared = nominal_detector(model.npix)
    shared["jitter"] = jnp.asarray(config.jitter)
    shared["read_noise"] = jnp.asarray(config.read_noise)
    shared["aberrations"] = {f: jnp.zeros(nterms) for f in sorted(model.bandpasses)}
    rates = [
        np.sum(np.where(o.bad, 0.0, o.slopes.mean(axis=0))) / float(o.spec.group_time)
        for o in observations
    ]
    n = len(observations)
    exposure = {
        "position": jnp.zeros((n, 2)),
        "log_flux": jnp.log10(jnp.asarray(rates)),
        "spectral_slope": jnp.zeros(n),
    }
    images = jnp.zeros((len(epochs), config.image_npix, config.image_npix))
    params = {"shared": shared, "epoch": {"log_image": images}, "exposure": exposure}
    return jax.tree.map(lambda x: jnp.asarray(x, dtype=jnp.float64), params)


def freeze_science_positions(observations: list[Observation]):
    """Gradient hook zeroing the positions of resolved exposures (their image carries
    the position, as in the seed notebook); calibrator positions stay free."""
    free = jnp.asarray([[0.0] if o.epoch is not None else [1.0] for o in observations])

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
    config: FitConfig, resume: bool = False, progress: bool = True, pictures: Path | None = None
) -> FitOutcome:
    """Fit the campaign store named by `config` (see the module docstring).

    The fit's pictures are logged to MLflow and, with `pictures`, also kept in that folder.
    """
    campaign = Campaign.open(config.campaign)
    names = list(campaign.names)
    observations = load_observations(campaign, names)
    epochs = sorted(campaign.epochs)
    model = build_model(config, sorted({o.spec.filter for o in observations}))
    batches = make_batches(observations, names, epochs)
    params = initial_params(config, model, observations, epochs)
    settings = settings_from(config, observations)
    fitter = make_fitter(model, params, batches, settings)
    state, start = None, 0
    if resume:
        results = Results.open(config.results, writable=True)
        start, trees = results.read_checkpoint({"params": params, "state": fitter.init(params)})
        params, state = jax.tree.map(jnp.asarray, (trees["params"], trees["state"]))
        run_id = _previous_run(config.results, config.tracking.uri)
    else:
        results = Results.create(config.results, overwrite=True)
        run_id = None
    remaining = config.steps - start
    tags = {"results": config.results, "campaign": config.campaign}
    with fit_run(
        config_to_dict(config),
        config.tracking.run_name or None,
        config.tracking.uri,
        run_id,
        tags=tags,
    ) as (active, metrics):
        clock = [time.perf_counter()]

        def record(step, p, s, terms):
            now = time.perf_counter()
            metrics.add(step, {**terms, "step_time": now - clock[0]})
            clock[0] = now
            if step % config.checkpoint_every == 0 or step == config.steps:
                results.write_checkpoint(step, {"params": p, "state": s}, keep=2)

        result = run(fitter, params, batches, remaining, state, start, progress, record)
        chi2 = float(reduced_chi_squared(model, result.params, batches))
        mlflow.log_metric("reduced_chi2", chi2, step=result.step)
        truth_metrics = (
            truth_comparison(config.truth, model, result, epochs) if config.truth else {}
        )
        mlflow.log_metrics(truth_metrics, step=result.step)
        _save(results, model, result, campaign, epochs, names)
        _log_artifacts(config, results, model, result, observations, epochs, pictures)
        return FitOutcome(
            active.info.run_id, result.params, result.history, chi2, result.step, truth_metrics
        )


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


def _log_artifacts(config, results, model, result, observations, epochs, pictures) -> None:
    from scaling.fit_plots import write_fit_pictures

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        export_fits(config.results, folder / "fits")
        mlflow.log_artifacts(str(folder / "fits"), "fits")
        pictures = write_fit_pictures(
            pictures or folder / "pictures",
            model,
            result,
            observations,
            epochs,
            config.truth or None,
        )
        mlflow.log_artifacts(str(pictures), "pictures")
