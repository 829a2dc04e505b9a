"""Prepare the next micro-batch in a background thread while the current one computes.

On a GPU, reading, decoding, resizing and text-encoding a batch in the training thread leaves the GPU
idle for that long (Lens: 32 JPEGs of up to 1024 px per rank per step). One worker thread prepares
micro-step k+1 while k runs; image decoding and torch ops release the GIL, so the two overlap. Keys
are taken in order and each is prepared exactly once, so the batches, and therefore the losses, are
the same with or without prefetching; the trainer checkpoints the sampler state recorded with the
batch it last *consumed*, not the sampler's own state, which is one batch ahead.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")
Key = tuple[int, int]  # (step, micro-step)


class Prefetcher(Generic[T]):
    def __init__(self, prepare: Callable[[Key], T], next_key: Callable[[Key], Key], enabled: bool = True):
        self.prepare, self.next_key = prepare, next_key
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") if enabled else None
        self.pending: tuple[Key, Future] | None = None

    def get(self, key: Key) -> T:
        """The prepared item for `key`, then start on the key after it."""
        if self.pending is None:
            item = self.prepare(key)
        elif self.pending[0] == key:
            item = self.pending[1].result()
            self.pending = None
        else:  # the prepared batch was already drawn from the sampler: skipping it would change the data
            raise RuntimeError(f"prefetched {self.pending[0]} but {key} was asked for")
        if self.pool is not None:
            following = self.next_key(key)
            self.pending = (following, self.pool.submit(self.prepare, following))
        return item

    def close(self) -> None:
        if self.pending is not None:
            self.pending[1].cancel()
            try:
                self.pending[1].result()
            except Exception:  # noqa: BLE001 - a prefetch nobody will use may fail harmlessly
                pass
            self.pending = None

    def shutdown(self) -> None:
        self.close()
        if self.pool is not None:
            self.pool.shutdown(wait=True)


__all__ = ["Prefetcher"]
