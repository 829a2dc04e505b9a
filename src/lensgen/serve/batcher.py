"""Dynamic batching behind a bounded queue: concurrent requests that can share a sampler call share one.

Each image to make is a `Job` with a key (model, size, steps, CFG: what one sampler call must have in
common). One worker thread takes the oldest job, gathers the waiting jobs with its key, and waits for more
until `max_batch` are there or the oldest has waited `max_wait_s`; then it runs them as one call. Other
keys wait their turn in arrival order, so none starves. The queue counts images (waiting or sampling):
when a request would take it past `max_queue` it is refused whole (`QueueFull`, with a Retry-After
estimate), so memory stays bounded under any burst. A job whose request gave up (timeout, client gone)
is cancelled and never sampled. `close()` refuses new work and finishes what was accepted.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any


class QueueFull(Exception):
    def __init__(self, retry_after_s: int):
        super().__init__(f"the queue is full; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class Closed(Exception):
    """The server is shutting down and takes no new work."""


@dataclass(eq=False)  # jobs are compared by identity
class Job:
    key: Hashable
    payload: Any  # what the runner needs for this image (prompt, seed, ...)
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)


# runner(key, payloads) -> one result per payload, in order
Runner = Callable[[Hashable, list[Any]], list[Any]]


class Batcher:
    def __init__(self, runner: Runner, max_batch: int = 8, max_wait_s: float = 0.05, max_queue: int = 64,
                 on_batch: Callable[[int, float], None] | None = None):
        self.runner, self.max_batch, self.max_wait_s, self.max_queue = runner, max_batch, max_wait_s, max_queue
        self.on_batch = on_batch  # (batch size, seconds) after each sampler call, for metrics
        self.pending: list[Job] = []
        self.running = 0  # images in the call now sampling
        self.cond = threading.Condition()
        self.closing = False
        self.batch_seconds = 1.0  # running estimate of one call's time, for Retry-After
        self.thread = threading.Thread(target=self._loop, name="lensgen-batcher", daemon=True)

    def start(self) -> Batcher:
        self.thread.start()
        return self

    @property
    def depth(self) -> int:
        """Images accepted and not yet answered."""
        with self.cond:
            return len(self.pending) + self.running

    def retry_after(self) -> int:
        """Seconds until the queue has room, roughly: the calls ahead times one call's time."""
        calls = math.ceil((len(self.pending) + self.running) / self.max_batch)
        return max(1, math.ceil(calls * self.batch_seconds))

    def submit(self, key: Hashable, payloads: list[Any]) -> list[Future]:
        """Queue one request's images; all or none (QueueFull, Closed)."""
        with self.cond:
            if self.closing:
                raise Closed("the server is shutting down")
            if len(self.pending) + self.running + len(payloads) > self.max_queue:
                raise QueueFull(self.retry_after())
            jobs = [Job(key, p) for p in payloads]
            self.pending.extend(jobs)
            self.cond.notify_all()
        for job in jobs:
            job.future.add_done_callback(lambda f, job=job: self._forget_if_cancelled(job))
        return [job.future for job in jobs]

    def _forget_if_cancelled(self, job: Job) -> None:
        if job.future.cancelled():
            with self.cond:
                if job in self.pending:
                    self.pending.remove(job)
                    self.cond.notify_all()

    def _next_batch(self) -> list[Job] | None:
        """The next call's jobs (waiting for company up to max_wait_s), or None when closed and drained."""
        with self.cond:
            while not self.pending:
                if self.closing:
                    return None
                self.cond.wait()
            while True:
                if not self.pending:  # all cancelled while we waited
                    return []
                first = self.pending[0]
                same = [j for j in self.pending if j.key == first.key][: self.max_batch]
                wait = first.enqueued + self.max_wait_s - time.monotonic()
                if len(same) >= self.max_batch or wait <= 0 or self.closing:
                    break
                self.cond.wait(wait)
            for job in same:
                self.pending.remove(job)
            self.running = len(same)
            return same

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            live = [j for j in batch if j.future.set_running_or_notify_cancel()]
            start = time.monotonic()
            try:
                if live:
                    results = self.runner(live[0].key, [j.payload for j in live])
                    if len(results) != len(live):
                        raise RuntimeError(f"the runner gave {len(results)} results for {len(live)} jobs")
                    for job, result in zip(live, results):
                        job.future.set_result(result)
            except BaseException as err:  # the requests get the error; the worker keeps serving
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(err)
            finally:
                seconds = time.monotonic() - start
                with self.cond:
                    self.running = 0
                    if live:
                        self.batch_seconds = 0.7 * self.batch_seconds + 0.3 * seconds
                    self.cond.notify_all()
                if live and self.on_batch is not None:
                    self.on_batch(len(live), seconds)

    def close(self, timeout: float | None = None) -> None:
        """Take no new work; let the worker finish every accepted job, then stop it."""
        with self.cond:
            self.closing = True
            self.cond.notify_all()
        if self.thread.is_alive():
            self.thread.join(timeout)
