"""The workers' own all-reduce of the shared gradient (`ClusterConfig.transport =
"collective"`): JAX's multi-process runtime joins the worker processes of a fit into one
group, and every worker sums the partial shared gradients itself (gloo, between the
processes' CPUs, also on GPU nodes: the shared gradient is small, and workers sharing a
GPU could not form a NCCL group), so the driver is off the path of each step.

Every process gets the same sum, and the shared update that follows is the same
computation on the same inputs, so the workers' shared parameters stay equal bit for bit
(the coordinator checks this at every block's end).
"""

import importlib
import inspect
import pickle
import socket

import jax
import numpy as np
import ray
from jax.sharding import Mesh, NamedSharding, PartitionSpec


@ray.remote(num_cpus=0)
def group_address() -> str:
    """host:port of a free port on the node this task runs on (rank 0's node)."""
    host = ray.util.get_node_ip_address()
    with socket.socket() as s:
        s.bind((host, 0))
        return f"{host}:{s.getsockname()[1]}"


def join_group(address: str, processes: int, rank: int) -> None:
    """Join the fit's process group (before this process's first JAX computation); rank
    0 serves it on `address` alone (not on every interface: on a local Ray cluster that
    is 127.0.0.1)."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=address,
        num_processes=processes,
        process_id=rank,
        initialization_timeout=120,
        coordinator_bind_address=address,
    )


def grouped(cls: type) -> type:
    """`cls` as a class whose instances first join a group: built with `(group, args)`,
    `group` being (address, processes, rank) and `args` the pickled arguments of `cls`,
    then `cls(*args)` with its public methods.

    For a Ray actor's process: importing dLux (and so `model` or `scaling`) starts JAX's
    backend, after which a process can no longer join a group, so `cls`'s module and its
    arguments' are imported only after joining (this class travels by value and names
    `cls`).
    """
    module, name = cls.__module__, cls.__qualname__

    def __init__(self, group: tuple[str, int, int], args: bytes):
        join_group(*group)
        self.inner = getattr(importlib.import_module(module), name)(*pickle.loads(args))

    methods = {
        method: _forwarded(method)
        for method, _ in inspect.getmembers(cls, inspect.isfunction)
        if not method.startswith("_")
    }
    return type(f"Grouped{cls.__name__}", (), {"__init__": __init__, **methods})


def _forwarded(method: str):
    def call(self, *args):
        return getattr(self.inner, method)(*args)

    call.__name__ = method
    return call


class AllReduce:
    """Sum of a pytree like `like` over the group's processes, returned to each of them
    (NumPy leaves): the leaves raveled into one vector on the host, so one collective
    per call through a program compiled once (its dispatch is most of its cost: about
    0.6 ms for 6,500 float64 between 2 processes of a 2-core machine).

    Args:
        like: a pytree of float arrays with the structure and shapes to be summed.
    """

    def __init__(self, like: dict):
        leaves, self.treedef = jax.tree.flatten(like)
        self.shapes = [np.shape(x) for x in leaves]
        sizes = [int(np.prod(s)) for s in self.shapes]
        self.splits = np.cumsum(sizes)[:-1]
        processes = jax.process_count()
        cpus = [jax.local_devices(p, backend="cpu")[0] for p in range(processes)]
        mesh = Mesh(np.asarray(cpus), ("workers",))
        self.rows = NamedSharding(mesh, PartitionSpec("workers"))
        self.device = jax.local_devices(backend="cpu")[0]
        self.shape = (processes, sum(sizes))
        total = jax.jit(
            lambda rows: rows.sum(0), out_shardings=NamedSharding(mesh, PartitionSpec())
        )
        self.sum = total.lower(self._rows(np.zeros(self.shape[1]))).compile()
        self(like)  # the first sum connects the processes (gloo): at start, not in a step

    def _rows(self, flat: np.ndarray) -> jax.Array:
        row = jax.device_put(flat[None], self.device)
        return jax.make_array_from_single_device_arrays(self.shape, self.rows, [row])

    def __call__(self, tree: dict) -> dict:
        flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)]).astype(np.float64)
        total = np.asarray(self.sum(self._rows(flat)).addressable_data(0))
        parts = np.split(total, self.splits)
        return jax.tree.unflatten(
            self.treedef, [p.reshape(s) for p, s in zip(parts, self.shapes, strict=True)]
        )
