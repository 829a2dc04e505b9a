"""Where the per-unit work runs: this process, a local process pool, or a Ray cluster.

Every executor maps `Worker.run` over task dicts and yields result dicts in completion order; the
outputs themselves are files each task writes atomically, so the executor never changes a result:
the manifests of a local and a Ray run over the same input are identical.

- `local` with 1 worker runs in this process (easy to debug); with N > 1 a `spawn` process pool, each
  process loading the models once.
- `ray` uses Ray Data: the work units become a dataset mapped by Ray tasks (`map_batches`, one unit
  per batch, at most `workers` at a time). Ray reuses worker processes, and each process keeps its
  Worker (models loaded once) across tasks and phases; measured here, a callable-class actor pool
  instead costs its whole start-up (~10 s on 2 cores) again for every phase. `run.ray_address` None starts a local Ray; "auto" joins the running cluster (start it
  with `ray start`); the output folder must be on storage every node sees.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from collections.abc import Iterator
from typing import Any

from lensgen.data.curate.config import CurateConfig
from lensgen.data.curate.worker import Worker

_WORKER: Worker | None = None


def _init_process(config: CurateConfig, root: str, out: str) -> None:
    global _WORKER
    import cv2

    cv2.setNumThreads(config.run.threads_per_worker)
    _WORKER = Worker(config, root, out, restore_threads=False)


def _run_in_process(task: dict[str, Any]) -> dict[str, Any]:
    return _WORKER.run(task)


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class LocalExecutor:
    def __init__(self, config: CurateConfig, root: str, out: str, workers: int = 0):
        self.config, self.root, self.out = config, root, out
        self.workers = workers or default_workers()
        self._pool = None
        self._worker: Worker | None = None

    def map(self, tasks: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        if not tasks:
            return
        if self.workers == 1:
            if self._worker is None:
                self._worker = Worker(self.config, self.root, self.out)
            for task in tasks:
                yield self._worker.run(task)
            return
        if self._pool is None:
            ctx = mp.get_context("spawn")
            self._pool = ctx.Pool(self.workers, initializer=_init_process, initargs=(self.config, self.root, self.out))
        yield from self._pool.imap_unordered(_run_in_process, tasks)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None


_RAY_WORKERS: dict[tuple[str, str, str], Worker] = {}


def _ray_batch(batch: dict[str, Any], config: CurateConfig, root: str, out: str) -> dict[str, list[str]]:
    """A Ray Data task. Ray reuses its worker processes, so the Worker (and its models) is cached per
    process and loaded once, and the write phase finds it warm after the score phase."""
    key = (config.fingerprint(), root, out)
    if key not in _RAY_WORKERS:
        _init_process(config, root, out)
        _RAY_WORKERS[key] = _WORKER
    worker = _RAY_WORKERS[key]
    return {"result": [json.dumps(worker.run(json.loads(t))) for t in batch["task"]]}


class RayExecutor:
    def __init__(self, config: CurateConfig, root: str, out: str, workers: int = 0):
        self.config, self.root, self.out = config, root, out
        self.workers = workers
        self._started = False

    def _start(self) -> None:
        import ray

        if not ray.is_initialized():
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            address = self.config.run.ray_address
            ray.init(
                address=address,
                num_cpus=None if address else (self.workers or default_workers()),
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
            self._started = True
        from ray.data import DataContext

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False  # ours (tqdm, per unit) are enough
        ctx.print_on_execution_start = False

    def map(self, tasks: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        if not tasks:
            return
        import ray
        import ray.data

        self._start()
        threads = self.config.run.threads_per_worker
        workers = self.workers or max(1, int(ray.cluster_resources().get("CPU", 1) // threads))
        # one unit per block up to 20k units (a block is one Ray task; beyond, a task takes several units)
        items = [{"task": json.dumps(t)} for t in tasks]
        dataset = ray.data.from_items(items, override_num_blocks=min(len(items), 20_000))
        results = dataset.map_batches(
            _ray_batch,
            fn_kwargs={"config": self.config, "root": self.root, "out": self.out},
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.TaskPoolStrategy(size=min(workers, len(tasks))),
            num_cpus=threads,
        )
        for row in results.iter_rows():
            yield json.loads(row["result"])

    def close(self) -> None:
        if self._started:
            import ray

            ray.shutdown()
            self._started = False


def make_executor(config: CurateConfig, root: str, out: str):
    cls = {"local": LocalExecutor, "ray": RayExecutor}[config.run.executor]
    return cls(config, root, out, config.run.workers)
