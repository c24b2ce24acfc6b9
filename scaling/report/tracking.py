"""Every fit is an MLflow run: config as params, versions as tags, batched metrics.

With nothing configured, runs go to MLflow's embedded SQLite store `mlflow.db` in the
working directory (artifacts under `mlruns/`); `MLFLOW_TRACKING_URI` or an explicit
`tracking_uri` selects another store or a tracking server.
"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version

import mlflow
from mlflow.entities import Metric, RunStatus
from mlflow.tracking import MlflowClient

EXPERIMENT = "ami-scaling"
PACKAGES = ("ami-scaling", "jax", "jaxlib", "equinox", "optax", "dLux", "numpy", "zarr", "mlflow")


def tracking_uri(explicit: str | None = None) -> str:
    """The tracking URI to use: explicit, else $MLFLOW_TRACKING_URI, else ./mlflow.db."""
    if explicit:
        return explicit
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{os.path.abspath('mlflow.db')}"


def flatten(config: Mapping, prefix: str = "") -> dict[str, str]:
    """Nested mapping → {"a.b.c": "value"} with string values (MLflow params)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)
    return out


def version_tags() -> dict[str, str]:
    """Package versions and the git commit of the working tree, as MLflow tags."""
    tags = {}
    for package in PACKAGES:
        with contextlib.suppress(PackageNotFoundError):
            tags[f"version.{package}"] = version(package)
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        ).stdout.strip()
        tags["git.commit"] = commit
    return tags


class MetricLog:
    """Buffers per-step metrics and sends them with `log_batch` every `every` steps (and
    whenever `flush` is called: a fit flushes at each checkpoint).

    A (metric, step) the run already holds is never sent again, so a resumed run logs each
    step once (see `catch_up`).
    """

    def __init__(self, client: MlflowClient, run_id: str, every: int = 50):
        self.client, self.run_id, self.every = client, run_id, every
        self.pending: list[Metric] = []
        self.logged: dict[str, set[int]] = {}

    def add(self, step: int, values: Mapping[str, float]) -> None:
        stamp = int(time.time() * 1000)
        self.pending += [
            Metric(k, float(v), stamp, step)
            for k, v in values.items()
            if step not in self.logged.get(k, ())
        ]
        if len(self.pending) >= self.every * max(len(values), 1):
            self.flush()

    def catch_up(self, history: Mapping[str, Sequence[float]], others: Sequence[str] = ()) -> None:
        """On resuming the run: note which steps of each metric of `history` (name →
        values of steps 1, 2, …) and of the metrics `others` (logged at some steps) it
        holds, and send the steps of `history` it lacks (those a killed driver had
        buffered)."""
        self.logged = {
            name: {m.step for m in self.client.get_metric_history(self.run_id, name)}
            for name in [*history, *others]
        }
        for name, values in history.items():
            for step, value in enumerate(values, start=1):
                self.add(step, {name: value})
        self.flush()

    def rewind(self, step: int) -> None:
        """Drop the buffered metrics of steps after `step` (a fit rolled back to it)."""
        self.pending = [m for m in self.pending if m.step <= step]

    def flush(self) -> None:
        for i in range(0, len(self.pending), 1000):
            self.client.log_batch(self.run_id, metrics=self.pending[i : i + 1000])
        for metric in self.pending:
            self.logged.setdefault(metric.key, set()).add(metric.step)
        self.pending = []


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler's or `kill`'s stop) raises KeyboardInterrupt inside the block,
    so a fit run flushes its metrics and is marked KILLED as on Ctrl-C. Only the main
    thread can take signals; elsewhere the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def ensure_experiment(uri: str) -> None:
    """Create the experiment in the store `uri` if it is not there yet (so its artifact
    location is the store's own default, as for fits logged straight to it)."""
    client = MlflowClient(uri)
    if client.get_experiment_by_name(EXPERIMENT) is None:
        client.create_experiment(EXPERIMENT)


@contextlib.contextmanager
def local_server(uri: str, timeout_s: float = 120.0) -> Iterator[str]:
    """An MLflow tracking server on 127.0.0.1 in front of the store `uri` for the block;
    yields its http URI. Many processes logging at once (a sweep's trials) go through
    it: one process writes the store (an SQLite file takes one writer at a time)."""
    ensure_experiment(uri)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--backend-store-uri", uri, "--workers", "1"]
    server = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    address = f"http://127.0.0.1:{port}"
    try:
        began = time.monotonic()
        while True:
            if server.poll() is not None:
                error = server.stderr.read().decode(errors="replace")[-2000:]
                raise RuntimeError(f"the MLflow server for {uri} stopped: {error}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{address}/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            if time.monotonic() - began > timeout_s:
                raise RuntimeError(f"the MLflow server for {uri} did not start in {timeout_s} s")
            time.sleep(0.5)
        yield address
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)  # the server and its worker processes
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        server.stderr.close()


@contextlib.contextmanager
def fit_run(
    config: Mapping,
    run_name: str | None = None,
    uri: str | None = None,
    run_id: str | None = None,
    parent_run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> Iterator[tuple[mlflow.ActiveRun, MetricLog]]:
    """Start (or, with `run_id`, continue) a fit run; on an error mark it FAILED with the
    error; stopped (Ctrl-C, SIGTERM: see `terminate_as_interrupt`; or SystemExit, as Ray
    Tune ends a trial its scheduler stops) KILLED; the buffered metrics are flushed first."""
    mlflow.set_tracking_uri(tracking_uri(uri))
    mlflow.set_experiment(EXPERIMENT)
    client = MlflowClient()
    kwargs = {"run_id": run_id} if run_id else {"run_name": run_name}
    if parent_run_id:
        kwargs["parent_run_id"] = parent_run_id
    run = mlflow.start_run(**kwargs)
    metrics = MetricLog(client, run.info.run_id)
    try:
        if run_id is None:
            mlflow.log_params(flatten(config))
        mlflow.set_tags({**version_tags(), **(tags or {})})
        with terminate_as_interrupt():
            yield run, metrics
    except BaseException as error:
        metrics.flush()
        mlflow.set_tag("error", f"{type(error).__name__}: {error}"[:5000])
        stopped = isinstance(error, KeyboardInterrupt | SystemExit)
        status = RunStatus.KILLED if stopped else RunStatus.FAILED
        mlflow.end_run(RunStatus.to_string(status))
        raise
    metrics.flush()
    mlflow.end_run()
