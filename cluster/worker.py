"""`ShardWorker`: one shard of a campaign, its local parameters and their optimiser states.

A worker reads its exposures straight from the campaign store, computes the Fisher
scale of its local parameters and its part of the shared one, and runs the engine's
`Fitter.local_step` on its exposures: it updates its local parameters itself and returns
only its partial shared gradient. Local parameters leave it only in checkpoints and
final results. `cluster.coordinator` runs it as a Ray actor; it is plain Python, so it
can also be driven in one process.
"""

import os
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import ray

from cluster.collective import AllReduce
from scaling.config import FitConfig
from scaling.data.results import Results
from scaling.data.store import Shard
from scaling.fitting.engine import (
    compiled_shared_step,
    initial_scale,
    join,
    make_fitter,
    renormalise_images,
    shard_batches,
    split,
)
from scaling.fitting.objective import chi_squared_sums, nll_sum, residual_maps
from scaling.fitting.start import fit_data, initial_params, open_selection, settings_from


class WorkerError(RuntimeError):
    """A worker's step failed (non-finite loss, bad data): names the worker and step."""


def configure_jax(compile_cache: str) -> None:
    """float64 and the persistent compilation cache shared by the workers of a node."""
    jax.config.update("jax_enable_x64", True)
    if compile_cache:
        os.makedirs(compile_cache, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", compile_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def check_devices(gpus: float, label: str) -> None:
    """Fail clearly when a worker asked for a GPU that JAX cannot see."""
    if gpus > 0 and jax.default_backend() != "gpu":
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
        raise RuntimeError(
            f"{label}: asked for {gpus} GPU(s) but JAX sees only {jax.devices()} "
            f"(CUDA_VISIBLE_DEVICES={visible}); install JAX's CUDA build on this node "
            "(pip install '.[cuda]') or set cluster.gpus_per_worker = 0"
        )


def device_peaks() -> dict[str, int]:
    """Device → peak bytes in use of this process, for devices that report it (GPUs)."""
    stats = {str(d): d.memory_stats() for d in jax.local_devices()}
    return {d: s["peak_bytes_in_use"] for d, s in stats.items() if s}


def host_peak_bytes() -> int:
    """Peak resident memory of this process, bytes: since `reset_host_peak` on Linux
    (VmHWM), else since the process started (ru_maxrss)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmHWM:"))
    except (OSError, StopIteration):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def reset_host_peak() -> None:
    """Restart the peak `host_peak_bytes` reports from the current resident memory
    (Linux's /proc/self/clear_refs; elsewhere the peak cannot be reset)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return


class ShardWorker:
    """The local half of every step for the exposures of one shard.

    Args:
        config: the fit config (model sizes, optimisers, regularisers, cluster).
        shard: the exposures and whole epochs this worker owns.
        filters: every filter of the campaign (the shared aberrations are keyed by them).
        grouped: whether this process has joined the fit's process group
            (`cluster.collective`), whose workers sum the shared gradient themselves
            (`run_steps`).
    """

    def __init__(self, config: FitConfig, shard: Shard, filters: list[str], grouped=False):
        reset_host_peak()
        configure_jax(config.cluster.compile_cache)
        self.grouped = grouped
        self.label = f"worker {shard.index}"
        check_devices(config.cluster.gpus_per_worker, self.label)
        self.config, self.shard = config, shard
        self.model = config.instrument.build(filters)
        self.epochs = list(shard.epochs)
        campaign = open_selection(config)
        data = fit_data(config, campaign, shard.exposures, self.epochs)
        self.observations = data.observations
        self.settings = settings_from(config, self.observations, campaign.names[0])
        spread = shard_batches if len(jax.local_devices()) > 1 else list
        self.batches, self.validation = spread(data.batches), spread(data.validation)
        self.initial = initial_params(config, self.model, self.observations, self.epochs, campaign)
        self.start_fisher = initial_scale(self.model, self.initial, self.batches, self.settings)
        self.fisher = self.start_fisher
        self.keeps_scale = bool(config.fisher_refresh)
        self.fitter, self.allreduce = None, None

    def describe(self) -> dict:
        """Where this worker runs and what it holds."""
        context = ray.get_runtime_context() if ray.is_initialized() else None
        return {
            "index": self.shard.index,
            "node_id": context.get_node_id() if context else "",
            "placement_group": (context.get_placement_group_id() or "") if context else "",
            "pid": os.getpid(),
            "devices": [str(d) for d in jax.local_devices()],
            "exposures": list(self.shard.exposures),
            "epochs": self.epochs,
            "batches": len(self.batches),
            "cost": self.shard.cost,
        }

    def memory_stats(self) -> dict[str, int]:
        """Peak bytes in use: "host" (this process's resident memory since it was built)
        and each device that reports it (GPUs)."""
        return {"host": host_peak_bytes(), **device_peaks()}

    def fisher_shared(self, shared: dict | None = None) -> dict:
        """This shard's part of the shared Fisher diagonal (summed by the coordinator): at
        the starting parameters, or with the broadcast `shared` at the current ones (its
        local part is then kept for `use_scale`)."""
        if shared is not None:
            self.fisher = initial_scale(self.model, self._with(shared), self.batches, self.settings)
        return jax.device_get(self.fisher["shared"])

    def use_scale(self, shared_scale: dict) -> None:
        """Build the step with the campaign's shared scale and this shard's local one."""
        scale = join({"shared": jax.tree.map(jnp.asarray, shared_scale)}, split(self.fisher)[1])
        self.fitter = make_fitter(self.model, self.initial, self.batches, self.settings, scale)
        if self.grouped:
            self.shared_step = compiled_shared_step(self.fitter)

    def start(self, shared_scale: dict) -> None:
        """Build the step with the starting scale (the campaign's shared part given),
        then `reset`."""
        self.fisher = self.start_fisher
        self.use_scale(shared_scale)
        if self.grouped and self.allreduce is None:
            self.allreduce = AllReduce(split(self.initial)[0]["shared"])
        self.reset()

    def reset(self) -> None:
        """Starting local parameters and fresh optimiser states."""
        self.local = renormalise_images(split(self.initial)[1])
        self.state = self.fitter.local_optimiser.init(self.local)
        self.step_index = 0

    def local_step(self, shared: dict) -> tuple[dict, dict[str, float], float]:
        """One local half-step at the broadcast `shared` parameters.

        Returns:
            (partial shared gradient, this shard's loss terms, seconds spent).
        """
        began = time.perf_counter()
        local, state, grads, terms = self.fitter.local_step(
            self._with(shared), self.state, self.batches
        )
        terms = {k: float(v) for k, v in terms.items()}
        self.step_index += 1
        if not np.isfinite(terms["total"]):
            raise WorkerError(
                f"{self.label} (exposures {', '.join(self.shard.exposures)}) at step "
                f"{self.step_index}: loss is {terms['total']}; its parameters are left as "
                "they were before the step"
            )
        self.local, self.state = local, state
        return jax.device_get(grads["shared"]), terms, time.perf_counter() - began

    def run_steps(self, shared: dict, shared_state, steps: int) -> dict:
        """`steps` whole steps in the group, from the broadcast `shared` parameters and
        their optimiser state: each a local half-step, the group's sum of the shared
        gradient and the shared update, the same in every worker of the group.

        Returns:
            {"terms": this shard's loss terms per step, "seconds": each local half-step's
            seconds, "wall": each whole step's seconds, "sumsq": the scaled shared
            gradient's sum of squares per step, "shared", "state": the shared parameters
            and optimiser state after the last}.
        """
        shared = jax.tree.map(jnp.asarray, shared)
        state = jax.tree.map(jnp.asarray, shared_state)
        out = {"terms": [], "seconds": [], "wall": [], "sumsq": []}
        for _ in range(steps):
            began = time.perf_counter()
            grads, terms, seconds = self.local_step(shared)
            summed = self.allreduce(grads)
            updated, state, sumsq = self.shared_step({"shared": shared}, state, {"shared": summed})
            shared = updated["shared"]
            out["terms"].append(terms)
            out["seconds"].append(seconds)
            out["sumsq"].append(float(sumsq))
            out["wall"].append(time.perf_counter() - began)
        return out | jax.device_get({"shared": shared, "state": state})

    def checkpoint(self) -> dict:
        """{"params": local parameters, "state": their optimiser state} (NumPy), and
        "scale": their Fisher scale when the fit refreshes it (`fisher_refresh`)."""
        trees = {"params": self.local, "state": self.state}
        if self.keeps_scale:
            trees["scale"] = split(self.fitter.scale)[1]
        return jax.device_get(trees)

    def restore(self, step: int) -> None:
        """Load this shard's part of the checkpoint at `step` from the results store (a
        saved local scale is used from the coordinator's next `use_scale`)."""
        results = Results.open(self.config.results)
        _, trees = results.read_checkpoint({self.shard.name: self.checkpoint()}, step)
        tree = jax.tree.map(jnp.asarray, trees[self.shard.name])
        self.local, self.state, self.step_index = tree["params"], tree["state"], step
        if self.keeps_scale:
            self.fisher = join(split(self.fisher)[0], tree["scale"])

    def params(self) -> dict:
        """Local parameters (NumPy), rows in shard order."""
        return jax.device_get(self.local)

    def chi_squared(self, shared: dict) -> tuple[float, float]:
        """(Σ χ², Σ measurements) of this shard at the `shared` parameters."""
        chi2, count = chi_squared_sums(self.model, self._with(shared), self.batches)
        return float(chi2), float(count)

    def validation_nll(self, shared: dict) -> float:
        """NLL of this shard's held-out validation pixels at the `shared` parameters."""
        return float(nll_sum(self.model, self._with(shared), self.validation))

    def residual_maps(self, shared: dict) -> dict[str, np.ndarray]:
        """Exposure name → (p, p) mean whitened residual of this shard."""
        return residual_maps(self.model, self._with(shared), self.observations, self.epochs)

    def _with(self, shared: dict) -> dict:
        return join({"shared": jax.tree.map(jnp.asarray, shared)}, self.local)
