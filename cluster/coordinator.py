"""`RayStepper`: the steps of a fit on Ray shard workers, equal to one process.

The coordinator (the driver process) holds the shared parameters and their optimiser.
Each step it sends them to every worker (`ClusterConfig.transport`: an object-store put
and one task per worker, or a Ray Compiled Graph, shared-memory channels to the resident
workers built at the first step), every worker runs its local half-step on its shard and
returns its partial shared gradient, and the coordinator sums those in shard order (so
the result does not depend on which worker answers first), scales them by the shared
Fisher diagonal and updates. The driver never reads exposure arrays. Calls other than the
step (checkpoints, χ², results) are ordinary actor tasks, made between steps.

With the "collective" transport the workers form a process group (`cluster.collective`)
and run the steps to the next checkpoint in one call each: every step they sum the
shared gradient among themselves and apply the same shared update, and the coordinator
receives the shared parameters only at the block's end (checking that every worker
holds the same, bit for bit).

A worker that dies raises `WorkerLost` after a replacement worker has been started on
the same shard (with "collective", after every worker has been replaced in a new group);
the fit then rolls every worker back to the last checkpoint.
"""

import dataclasses
import math
import os
import pickle
import time
import warnings
from pathlib import Path

import jax
import numpy as np
import ray
from ray._private import ray_constants
from ray.dag import InputNode, MultiOutputNode
from ray.experimental.compiled_dag_ref import CompiledDAGRef
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cluster.collective import group_address, grouped
from cluster.worker import ShardWorker, configure_jax
from model import ExposureModel
from scaling.config import ClusterConfig, FitConfig
from scaling.data.results import Results
from scaling.data.store import Campaign, StoreError
from scaling.fitting.engine import compiled_shared_step, join, make_fitter, summarise
from scaling.fitting.precondition import unit_outside
from scaling.fitting.start import initial_shared, settings_from
from scaling.fitting.stepper import WorkerLost

LOCAL_HOST = "127.0.0.1"
PLACEMENT_TIMEOUT_S = 120.0


def worker_env(cluster: ClusterConfig) -> dict[str, str]:
    """Environment of a worker process: float64, GPU memory grown on demand (so actors
    sharing a GPU do not each preallocate most of it)."""
    env = {"JAX_ENABLE_X64": "1", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    if 0 < cluster.gpus_per_worker < 1:
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 * cluster.gpus_per_worker:.3f}"
    return env


def compile_cache(cluster: ClusterConfig) -> str:
    """The compilation cache folder: the config's, else JAX's own $JAX_COMPILATION_CACHE_DIR,
    else one per user on each node."""
    default = str(Path.home() / ".cache" / "ami-scaling" / "jax")
    return cluster.compile_cache or os.environ.get("JAX_COMPILATION_CACHE_DIR") or default


def connect(cluster: ClusterConfig) -> bool:
    """Join the configured Ray cluster, or start a local one bound to 127.0.0.1.

    Returns True when this call connected (so the caller disconnects), False when Ray
    was already initialised by the caller.
    """
    if ray.is_initialized():
        return False
    if cluster.address:
        ray.init(address=cluster.address, log_to_driver=False)
        return True
    _loopback_only()
    need = math.ceil(cluster.workers * cluster.cpus_per_worker)
    with warnings.catch_warnings():
        # Ray starts its processes with subprocess (fork, then exec at once): safe.
        warnings.filterwarnings("ignore", "os.fork", RuntimeWarning)
        ray.init(
            address="local",  # a new cluster, whatever another process here runs
            num_cpus=max(os.cpu_count() or 1, need),
            include_dashboard=False,
            dashboard_host=LOCAL_HOST,
            _node_ip_address=LOCAL_HOST,
            log_to_driver=False,
        )
    return True


def _loopback_only() -> None:
    """Make a local Ray cluster listen on 127.0.0.1 alone.

    On Linux Ray resolves even an explicit 127.0.0.1 to the machine's network address and
    its GCS and raylets listen on every interface; Ray's switch for single-machine
    clusters (the one it uses on macOS and Windows) keeps them on the loopback address.
    It is read by this process (a constant) and by the processes Ray starts (the
    environment).
    """
    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def _sum(trees: list[dict]) -> dict:
    """Leaf-wise sum in list order (fixed, for reproducibility)."""
    total = trees[0]
    for tree in trees[1:]:
        total = jax.tree.map(np.add, total, tree)
    return total


class RayStepper:
    """Runs a fit's steps on Ray workers (a `scaling.fitting.stepper.Stepper`)."""

    def __init__(
        self, config: FitConfig, campaign: Campaign, model: ExposureModel, epochs: list[str]
    ):
        cluster = config.cluster
        if cluster.workers < 1:
            raise ValueError(f"cluster.workers: expected >= 1 for a Ray fit, got {cluster.workers}")
        if config.quasi_newton.steps:
            raise ValueError(
                "quasi_newton.steps: the L-BFGS stage runs in one process only; "
                "set cluster.workers = 0 or quasi_newton.steps = 0"
            )
        self.config = dataclasses.replace(
            config, cluster=dataclasses.replace(cluster, compile_cache=compile_cache(cluster))
        )
        configure_jax(self.config.cluster.compile_cache)  # the shared update: compiled once
        self.names, self.epochs = list(campaign.names), epochs
        self.shards = [s for s in campaign.partition(cluster.workers) if s.exposures]
        self.filters = sorted(model.bandpasses)
        self.owns_ray = connect(cluster)
        self.group, self.owns_group, self.first_bundle = None, False, 0
        self.workers: list = []
        self.graph = None
        self.pending: list[dict[str, float]] = []
        try:
            self._place()
            self.workers = self._spawn_all()
            self.where = ray.get([w.describe.remote() for w in self.workers])
            self.settings = settings_from(config, [])
            self.start_scale = self._summed_scale(
                ray.get([w.fisher_shared.remote() for w in self.workers])
            )
            ray.get([w.start.remote(self.start_scale) for w in self.workers])
            self.model = model
            self.initial = jax.device_get(initial_shared(config, model, campaign))
            self._use_scale(self.start_scale, workers=False)
            self._reset_shared()
        except BaseException:
            self.close()
            raise

    # --- placement ---------------------------------------------------------------------

    def _bundle(self) -> dict[str, float]:
        c = self.config.cluster
        return {
            "CPU": c.cpus_per_worker,
            **({"GPU": c.gpus_per_worker} if c.gpus_per_worker else {}),
        }

    def _place(self) -> None:
        """Reserve a bundle per worker: in the placement group this process runs in (a
        sweep's trial: bundle 0 is its driver, 1… its workers), else in a new one."""
        trial_group = ray.util.get_current_placement_group()
        if trial_group is not None:
            if len(trial_group.bundle_specs) < len(self.shards) + 1:
                raise ValueError(
                    f"cluster.workers: {len(self.shards)} workers need {len(self.shards)} "
                    f"bundles besides the driver's; its placement group has "
                    f"{len(trial_group.bundle_specs)}"
                )
            self.group, self.first_bundle, self.owns_group = trial_group, 1, False
            return
        self.first_bundle, self.owns_group = 0, True
        bundles = [self._bundle() for _ in self.shards]
        gpus, seen = sum(b.get("GPU", 0) for b in bundles), ray.cluster_resources().get("GPU", 0)
        if gpus > seen and not self.config.cluster.address:  # a joined cluster may autoscale
            raise ValueError(
                f"cluster.gpus_per_worker: {len(bundles)} workers need {gpus:g} GPU(s) but this "
                f"machine's Ray sees {seen:g}; "
                "use gpus_per_worker = 0 here, or --address to join a cluster with GPUs"
            )
        self.group = placement_group(bundles, strategy=self.config.cluster.placement)
        ready, _ = ray.wait([self.group.ready()], timeout=PLACEMENT_TIMEOUT_S)
        if not ready:
            raise RuntimeError(
                f"cannot place {len(bundles)} workers of {self._bundle()} each "
                f"({self.config.cluster.placement}) on this Ray cluster within "
                f"{PLACEMENT_TIMEOUT_S:.0f} s; it has {ray.cluster_resources()}"
            )

    @property
    def grouped(self) -> bool:
        """Whether the workers sum the shared gradient themselves (`cluster.collective`)."""
        return self.config.cluster.transport == "collective"

    def _spawn_all(self) -> list:
        """A worker per shard; with the "collective" transport, joined in a new group
        whose rank 0 (shard 0) serves it on a free port of its node."""
        if not self.grouped:
            return [self._spawn(i) for i in range(len(self.shards))]
        on_rank_0 = PlacementGroupSchedulingStrategy(
            placement_group=self.group, placement_group_bundle_index=self.first_bundle
        )
        address = ray.get(group_address.options(scheduling_strategy=on_rank_0).remote())
        n = len(self.shards)
        return [self._spawn(i, (address, n, i)) for i in range(n)]

    def _spawn(self, i: int, group: tuple[str, int, int] | None = None):
        """Worker `i`; in a process that first joins `group` (address, processes, rank)
        when one is given."""
        c = self.config.cluster
        actor = ray.remote(ShardWorker if group is None else grouped(ShardWorker)).options(
            num_cpus=c.cpus_per_worker,
            num_gpus=c.gpus_per_worker,
            runtime_env={"env_vars": worker_env(c)},
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=self.group, placement_group_bundle_index=self.first_bundle + i
            ),
            name=None,
        )
        args = (self.config, self.shards[i], self.filters)
        if group is None:
            return actor.remote(*args)
        return actor.remote(group, pickle.dumps((*args, True)))

    # --- the Stepper protocol ----------------------------------------------------------

    def _reset_shared(self) -> None:
        self.shared = self.initial
        self.shared_state = self.fitter.shared_optimiser.init({"shared": self.initial})
        self.step_index = 0
        self.pending = []

    def reset(self) -> None:
        if self.shared_scale is self.start_scale:
            self._gather([w.reset.remote() for w in self.workers], "reset")
        else:
            self._gather([w.start.remote(self.start_scale) for w in self.workers], "reset")
            self._use_scale(self.start_scale, workers=False)
        self._reset_shared()

    def rescale(self) -> None:
        refs = [w.fisher_shared.remote(self.shared) for w in self.workers]
        self._use_scale(self._summed_scale(self._gather(refs, "Fisher diagonal")))

    def _summed_scale(self, parts: list[dict]) -> dict:
        """The shared scale from the workers' parts of the Fisher diagonal."""
        summed = {"shared": _sum(parts)}
        return unit_outside(summed, self.settings.preconditioned)["shared"]

    def _use_scale(self, shared_scale: dict, workers: bool = True) -> None:
        """Step with `shared_scale` from now on: the coordinator's shared update and, with
        `workers`, every worker's step (each with its own local scale)."""
        if workers:
            self._gather([w.use_scale.remote(shared_scale) for w in self.workers], "scale")
        empty = {"epoch": {}, "exposure": {}}
        self.shared_scale = shared_scale
        self.fitter = make_fitter(
            self.model,
            join({"shared": self.initial}, empty),
            [],
            self.settings,
            join({"shared": shared_scale}, empty),
        )
        self.shared_step = compiled_shared_step(self.fitter)

    def step(self) -> dict[str, float]:
        if self.grouped:
            if not self.pending:
                self.pending = self._run_block()
            self.step_index += 1
            return self.pending.pop(0)
        if self.config.cluster.transport == "graph":
            refs = self._step_graph().execute(self.shared)
        else:
            refs = self._call_with_shared("local_step")
        outs = self._gather(refs, "step")
        grads = {"shared": _sum([g for g, _, _ in outs])}
        shared, state, shared_sumsq = self.shared_step(
            {"shared": self.shared}, self.shared_state, grads
        )
        self.shared, self.shared_state = jax.device_get(shared["shared"]), state
        self.step_index += 1
        return _step_row([t for _, t, _ in outs], shared_sumsq, [s for _, _, s in outs])

    def _run_block(self) -> list[dict[str, float]]:
        """The steps to the next checkpoint, Fisher refresh or the fit's end, run by the
        grouped workers in one call each → every step's terms; its "step_time" is the
        step's time in the workers (worker 0's: the group's all-reduce makes every worker
        wait for the slowest) plus an equal share of the block's time beyond worker 0's
        steps (the call's round trip). The shared parameters and state after the block
        must be the same in every worker, bit for bit."""
        every, end, done = self.config.checkpoint_every, self.config.steps, self.step_index
        refresh = [r - done for r in self.config.fisher_refresh if r > done]
        steps = max(1, min(every - done % every, end - done, *refresh))
        began = time.perf_counter()
        outs = self._gather(
            [w.run_steps.remote(self.shared, self.shared_state, steps) for w in self.workers],
            "step",
        )
        walls = np.asarray(outs[0]["wall"])  # worker 0's: its steps follow each other
        share = (time.perf_counter() - began - walls.sum()) / steps
        first = jax.tree.leaves((outs[0]["shared"], outs[0]["state"]))
        for i, out in enumerate(outs[1:], 1):
            other = jax.tree.leaves((out["shared"], out["state"]))
            if not all(map(np.array_equal, other, first)):
                raise RuntimeError(
                    f"worker {i}: its shared parameters after step {done + steps} differ "
                    "from worker 0's (the group's sum must be the same in every worker)"
                )
        self.shared, self.shared_state = outs[0]["shared"], outs[0]["state"]
        return [
            _step_row(
                [o["terms"][k] for o in outs],
                outs[0]["sumsq"][k],
                [o["seconds"][k] for o in outs],
            )
            | {"step_time": float(walls[k] + share)}
            for k in range(steps)
        ]

    def checkpoint(self) -> dict:
        parts = self._gather([w.checkpoint.remote() for w in self.workers], "checkpoint")
        trees = {"shared": {"params": self.shared, "state": jax.device_get(self.shared_state)}}
        if self.config.fisher_refresh:
            trees["shared"]["scale"] = self.shared_scale
        trees.update({s.name: part for s, part in zip(self.shards, parts, strict=True)})
        return trees

    def restore(self, results: Results, step: int | None = None) -> int:
        like = {"shared": {"params": self.shared, "state": self.shared_state}}
        if self.config.fisher_refresh:
            like["shared"]["scale"] = self.shared_scale
        try:
            step, trees = results.read_checkpoint(like, step)
            self._gather([w.restore.remote(step) for w in self.workers], "restore")
        except (StoreError, KeyError, RuntimeError) as err:
            raise ValueError(
                f"{results.where}: the checkpoint does not match a fit with "
                f"{len(self.shards)} worker(s) (resume with the worker count that wrote "
                f"it): {err}"
            ) from err
        if self.config.fisher_refresh:
            self._use_scale(trees["shared"]["scale"])
        self.shared = trees["shared"]["params"]
        self.shared_state = jax.tree.map(np.asarray, trees["shared"]["state"])
        self.step_index, self.pending = step, []
        return step

    def params(self) -> dict:
        parts = self._gather([w.params.remote() for w in self.workers], "params")
        exposure = _assemble([p["exposure"] for p in parts], self._rows("exposures"))
        epoch = _assemble([p["epoch"] for p in parts], self._rows("epochs"))
        return {"shared": self.shared, "epoch": epoch, "exposure": exposure}

    def chi_squared(self) -> tuple[float, float]:
        sums = self._gather(self._call_with_shared("chi_squared"), "chi2")
        return sum(c for c, _ in sums), sum(n for _, n in sums)

    def placement_tags(self) -> dict[str, str]:
        driver = ray.get_runtime_context().get_placement_group_id() or ""
        tags = {"placement.driver_group": driver}
        for w in self.where:
            i = w["index"]
            tags |= {f"placement.worker{i}.{k}": str(w[k]) for k in ("node_id", "pid")}
            tags[f"placement.worker{i}.group"] = w["placement_group"]
        return tags

    def validation_nll(self) -> float:
        if not self.config.validation_fraction:
            return float("nan")
        return sum(self._gather(self._call_with_shared("validation_nll"), "nll"))

    def residual_maps(self) -> dict[str, np.ndarray]:
        maps = self._gather(self._call_with_shared("residual_maps"), "residuals")
        return {name: m[name] for m in maps for name in m}

    def refine(self, names, steps: int, memory: int, tolerance: float = 0.0) -> list[float]:
        raise ValueError("quasi_newton: the L-BFGS stage runs in one process only")

    def _step_graph(self):
        """The compiled graph of one step: the shared parameters in, every worker's
        `local_step` out, in shard order (compiled at the first step after the workers
        change)."""
        if self.graph is None:
            with InputNode() as shared:
                steps = MultiOutputNode([w.local_step.bind(shared) for w in self.workers])
            self.graph = steps.experimental_compile()
        return self.graph

    def _drop_graph(self) -> None:
        if self.graph is not None:
            self.graph.teardown()
            self.graph = None

    def close(self) -> None:
        self._drop_graph()
        for w in self.workers:
            ray.kill(w, no_restart=True)
        self.workers = []
        if self.group is not None and self.owns_group:
            remove_placement_group(self.group)
            self.group = None
        if self.owns_ray:
            ray.shutdown()
            self.owns_ray = False

    # --- failures ----------------------------------------------------------------------

    def _rows(self, what: str) -> list[list[int]]:
        if what == "exposures":
            return [[self.names.index(n) for n in s.exposures] for s in self.shards]
        return [[self.epochs.index(e) for e in s.epochs] for s in self.shards]

    def _call_with_shared(self, method: str) -> list:
        """One call of the workers' `method` each on the current shared parameters, put
        in the object store once → their refs, in shard order."""
        shared = ray.put(self.shared)
        return [getattr(w, method).remote(shared) for w in self.workers]

    def _gather(self, refs: list, what: str) -> list:
        """Results of one call per worker; a dead worker is replaced (with the
        "collective" transport, every worker: the group is rebuilt), then `WorkerLost`."""
        out, lost = [], []
        ended = self._settle(refs) if self.grouped else range(len(refs))
        for i, ref in enumerate(refs):
            if i not in ended:
                continue
            try:
                out.append(ref.get(timeout=-1) if isinstance(ref, CompiledDAGRef) else ray.get(ref))
            except (ray.exceptions.RayActorError, ray.exceptions.RayChannelError) as err:
                lost.append((i, err))
            except ray.exceptions.RayTaskError as err:
                raise RuntimeError(
                    f"worker {i} (exposures {', '.join(self.shards[i].exposures)}) failed in "
                    f"{what} at step {self.step_index + 1}: {err.cause}"
                ) from err
        if lost:
            self._drop_graph()  # a dead actor ends the graph: every output reports it
            dead = [(i, e) for i, e in lost if not self._alive(i)]
            if self.grouped:
                self._regroup()
            else:
                for i, _ in dead:
                    self._replace(i)
            i, err = (dead or lost)[0]
            raise WorkerLost(
                f"worker {i} on node {self.where[i]['node_id'][:12]} (exposures "
                f"{', '.join(self.shards[i].exposures)}) lost in {what} at step "
                f"{self.step_index + 1}: {type(err).__name__}"
            )
        return out

    @staticmethod
    def _settle(refs: list) -> set[int]:
        """Wait until every call has ended or one has failed (its group's other workers
        then wait for it for ever) → the indices of the calls that ended."""
        pending = list(refs)
        while pending:
            ended, pending = ray.wait(pending, num_returns=1)
            try:
                ray.get(ended[0])
            except Exception:  # reported by `_gather`, which reads it again
                break
        return {i for i, ref in enumerate(refs) if ref not in pending}

    def _regroup(self) -> None:
        """Every worker replaced by a new one in a new group."""
        for w in self.workers:
            ray.kill(w, no_restart=True)
        self.workers = self._spawn_all()
        ray.get([w.start.remote(self.shared_scale) for w in self.workers])
        self.where = ray.get([w.describe.remote() for w in self.workers])

    def _alive(self, i: int) -> bool:
        try:
            ray.get(self.workers[i].describe.remote())
        except ray.exceptions.RayActorError:
            return False
        return True

    def _replace(self, i: int) -> None:
        ray.kill(self.workers[i], no_restart=True)
        self.workers[i] = self._spawn(i)
        ray.get(self.workers[i].start.remote(self.shared_scale))
        self.where[i] = ray.get(self.workers[i].describe.remote())


def _step_row(terms: list[dict], shared_sumsq, seconds: list[float]) -> dict[str, float]:
    """A step's row from every worker's loss terms (summed) and compute seconds
    ("worker_time.I"), with the shared gradient's sum of squares."""
    row = summarise({k: sum(t[k] for t in terms) for k in terms[0]}, shared_sumsq)
    return row | {f"worker_time.{i}": s for i, s in enumerate(seconds)}


def _assemble(parts: list[dict], rows: list[list[int]]) -> dict:
    """Stack per-shard rows of each leaf back into campaign order."""
    out = {}
    for name in parts[0]:
        leaves = [np.asarray(p[name]) for p in parts]
        full = np.empty((sum(len(r) for r in rows), *leaves[0].shape[1:]), leaves[0].dtype)
        for leaf, r in zip(leaves, rows, strict=True):
            full[r] = leaf
        out[name] = full
    return out
