"""Executors: run one per-batch function over a stream of inputs, locally or on Ray Data, in input order.

A job is a list of `units` (e.g. shards), a `read(unit)` that yields a unit's
items, and a `process(items) -> results` that maps a batch of items to one
result each. Both executors read every unit, cut the items into batches of
`batch_size` *within* a unit, apply the same `process`, and yield the results in
input order, so whatever consumes them (the cleaning pipeline's dedup pass) sees
the same sequence either way and keeps the same ids.

- `run_local`: a process pool (forkserver) with `workers` processes, each
  limited to one thread of torch and OpenCV so N workers use N cores; a worker
  that dies (killed, out of memory) ends the run with `WorkerDied` at once;
  `workers <= 1` runs in this process, which is easiest to debug. `process`
  must be picklable, and so must whatever `read` yields; a script that calls it
  needs the `if __name__ == "__main__":` guard, as with any start method but fork.
- `run_ray`: Ray Data; units are read by Ray tasks (`flat_map`) and batches are
  processed by an actor pool of `workers` actors (`map_batches`), each holding
  one copy of `process` (models are loaded once per actor, not per batch).
  Needs the `ray` extra. Without a running Ray cluster it starts a local one
  with `workers` CPUs.
"""

from __future__ import annotations

import multiprocessing
import pickle
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import islice
from typing import Any, TypeVar

from vlstack.errors import ConfigError, DataError

U = TypeVar("U")
T = TypeVar("T")
R = TypeVar("R")

Reader = Callable[[Any], Iterable[Any]]
Processor = Callable[[list[Any]], list[Any]]
_PROCESS: Processor | None = None
"""In a local worker process: the `process` it runs."""


class WorkerDied(DataError):
    """A local worker process ended without returning its batch (killed by a signal, out of memory)."""


def batches(units: Sequence[U], read: Callable[[U], Iterable[T]], batch_size: int) -> Iterator[list[T]]:
    """Items of every unit in order, in batches of `batch_size` that never span two units."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    for unit in units:
        items = iter(read(unit))
        while batch := list(islice(items, batch_size)):
            yield batch


def run_local(units: Sequence[U], read: Callable[[U], Iterable[T]], process: Callable[[list[T]], list[R]],
              workers: int = 1, batch_size: int = 32) -> Iterator[R]:
    """`process` over every batch with `workers` processes; results in input order."""
    if workers <= 1:
        for batch in batches(units, read, batch_size):
            yield from process(batch)
        return
    # forkserver, not fork: a child forked from a parent whose OpenCV or OpenMP thread pools have run
    # hangs on its first threaded call; forkserver children come from a clean process
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([type(process).__module__])  # import torch, OpenCV, ... once, in the server
    pending: deque[Future] = deque()
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(process,))
    broken = False
    try:
        for batch in batches(units, read, batch_size):
            pending.append(pool.submit(_process_in_worker, batch))
            if len(pending) >= 2 * workers:  # bounded read-ahead: memory stays flat on any corpus
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()
    except BrokenProcessPool:
        broken = True
        raise WorkerDied(f"a worker process died ({_exit_codes(pool)}; a negative code is the signal, -9 often "
                         "the out-of-memory killer); the batches it and the others held were not processed") from None
    finally:  # a broken pool cleans up on its own thread: waiting on it could hang on the dead worker's locks
        pool.shutdown(wait=not broken, cancel_futures=True)


def _exit_codes(pool: ProcessPoolExecutor) -> str:
    """The exit codes of a broken pool's processes (the pool terminates the survivors: -15)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for p in processes:
        p.join(timeout=5)
    return ", ".join(f"pid {p.pid} exit code {p.exitcode}" for p in processes if p.exitcode != 0) or "killed"


def run_ray(units: Sequence[U], read: Callable[[U], Iterable[T]], process: Callable[[list[T]], list[R]],
            workers: int = 2, batch_size: int = 32) -> Iterator[R]:
    """`process` over every batch on Ray Data with `workers` actors; results in input order."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("the Ray executor needs Ray Data: pip install 'vlstack[ray]' "
                          "(or pip install 'ray[data]')") from exc
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    if not ray.is_initialized():
        ray.init(num_cpus=max(1, workers), include_dashboard=False, log_to_driver=False)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # the dedup pass needs the input order
    context.enable_progress_bars = False  # the caller shows one bar for the whole run
    rows = [{"unit": pickle.dumps(unit)} for unit in units]
    dataset = ray.data.from_items(rows, override_num_blocks=max(1, len(units)))
    # reading is light I/O: num_cpus=0 lets it run beside the `workers` actors, which hold every CPU
    dataset = dataset.flat_map(_ReadRows(read), num_cpus=0).map_batches(
        _RayApply, fn_constructor_kwargs={"process": process}, batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=max(1, workers)), batch_format="numpy",
    )
    for row in dataset.iter_rows():
        yield pickle.loads(row["result"])


EXECUTORS: dict[str, Callable[..., Iterator[Any]]] = {"local": run_local, "ray": run_ray}


def get_executor(name: str) -> Callable[..., Iterator[Any]]:
    if name not in EXECUTORS:
        raise ConfigError(f"unknown executor {name!r}; valid executors: {', '.join(EXECUTORS)}")
    return EXECUTORS[name]


def _one_thread() -> None:
    """One core per worker: torch and OpenCV would otherwise each start a thread per core in every worker."""
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def _start_worker(process: Processor) -> None:
    """Runs once in each local worker: `process` (and its models) arrives pickled once, not per batch."""
    global _PROCESS
    _one_thread()
    _PROCESS = process


def _process_in_worker(batch: list[Any]) -> list[Any]:
    return _PROCESS(batch)


class _ReadRows:
    """Ray `flat_map` function: one row per item of a unit.

    Rows carry items pickled to bytes: Ray stores a bytes column as is, where it would first try (and
    fail) to convert arbitrary objects to Arrow types on every block."""

    def __init__(self, read: Reader):
        self.read = read

    def __call__(self, row: dict[str, Any]) -> list[dict[str, bytes]]:
        return [{"item": pickle.dumps(item)} for item in self.read(pickle.loads(row["unit"]))]


class _RayApply:
    """Ray actor: holds one `process` and applies it to numpy batches of item objects."""

    def __init__(self, process: Processor):
        _one_thread()
        self.process = process

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[bytes]]:
        results = self.process([pickle.loads(item) for item in batch["item"]])
        return {"result": [pickle.dumps(result) for result in results]}
