"""What runs the steps of a fit: the `Stepper` protocol and its single-process `InProcess`.

`scaling fit` drives a stepper; `cluster.coordinator.RayStepper` is the other one. A
stepper's parameters are laid out as in a single process (exposures in campaign order,
epochs sorted by name).
"""

from collections.abc import Callable
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PyTree

from model import ExposureModel
from scaling.config import FitConfig
from scaling.data.results import Results
from scaling.data.store import Campaign
from scaling.fitting.engine import join, make_fitter, renormalise_images, split
from scaling.fitting.objective import chi_squared_sums, nll_sum, residual_maps
from scaling.fitting.quasi_newton import lbfgs_refine
from scaling.fitting.start import fit_data, initial_params, settings_from


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
        """Back to the starting parameters, fresh optimiser states and the starting
        Fisher scale (step 0)."""

    def rescale(self) -> None:
        """Evaluate the Fisher diagonal again at the current parameters (`fisher_refresh`);
        the optimiser states are kept. Checkpoints then hold the scale, so a resumed or
        rolled-back fit goes on with the scale it had."""

    def params(self) -> dict:
        """All current parameters."""

    def chi_squared(self) -> tuple[float, float]:
        """(Σ χ², Σ measurements) at the current parameters."""

    def residual_maps(self) -> dict[str, np.ndarray]:
        """Exposure name → (p, p) mean whitened residual (NaN on bad pixels)."""

    def validation_nll(self) -> float:
        """NLL of the held-out validation pixels at the current parameters (NaN when the
        fit holds none out)."""

    def placement_tags(self) -> dict[str, str]:
        """Where the fit runs, as MLflow tags (workers' nodes, processes, placement)."""

    def refine(self, names, steps: int, memory: int, tolerance: float = 0.0) -> list[float]:
        """The quasi-Newton stage on parameters `names`; the loss before each iteration
        (fewer than `steps` once it has converged to `tolerance`, see `lbfgs_refine`)."""

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
        data = fit_data(config, campaign, campaign.names, epochs)
        self.observations, self.batches, self.validation = (
            data.observations,
            data.batches,
            data.validation,
        )
        self.initial = initial_params(config, model, self.observations, epochs, campaign)
        settings = settings_from(config, self.observations, campaign.names[0])
        self.start_fitter = make_fitter(model, self.initial, self.batches, settings)
        self.keeps_scale = bool(config.fisher_refresh)
        self.reset()

    def reset(self) -> None:
        shared, local = split(self.initial)
        self._params = join(shared, renormalise_images(local))
        self.fitter = self.start_fitter
        self._state = self.fitter.init(self._params)

    def rescale(self) -> None:
        self.fitter = make_fitter(self.model, self._params, self.batches, self.fitter.settings)

    def step(self) -> dict[str, float]:
        self._params, self._state, terms = self.fitter.step(self._params, self._state, self.batches)
        return terms

    def checkpoint(self) -> dict[str, PyTree]:
        trees = {"params": self._params, "state": self._state}
        return trees | ({"scale": self.fitter.scale} if self.keeps_scale else {})

    def restore(self, results: Results, step: int | None = None) -> int:
        step, trees = results.read_checkpoint(self.checkpoint(), step)
        trees = jax.tree.map(jnp.asarray, trees)
        self._params, self._state = trees["params"], trees["state"]
        if self.keeps_scale:
            settings = self.fitter.settings
            self.fitter = make_fitter(self.model, self._params, [], settings, trees["scale"])
        return step

    def params(self) -> dict:
        return self._params

    def chi_squared(self) -> tuple[float, float]:
        chi2, count = chi_squared_sums(self.model, self._params, self.batches)
        return float(chi2), float(count)

    def residual_maps(self) -> dict[str, np.ndarray]:
        return residual_maps(self.model, self._params, self.observations, self.epochs)

    def placement_tags(self) -> dict[str, str]:
        return {}

    def validation_nll(self) -> float:
        if not self.validation:
            return float("nan")
        return float(nll_sum(self.model, self._params, self.validation))

    def refine(self, names, steps: int, memory: int, tolerance: float = 0.0) -> list[float]:
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
            scale=self.fitter.scale if settings.preconditioned else None,
            tolerance=tolerance,
        )
        return totals

    def close(self) -> None:
        pass
