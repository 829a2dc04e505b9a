"""The prefetch thread prepares keys in order, once each, and gives what a sequential loop would."""

import threading

import pytest

from lensgen.train.prefetch import Prefetcher


def next_key(key):
    step, micro = key
    return (step, micro + 1) if micro + 1 < 2 else (step + 1, 0)


@pytest.mark.parametrize("enabled", [True, False])
def test_items_come_in_order_and_are_prepared_once(enabled):
    drawn, threads = [], set()

    def prepare(key):
        drawn.append(key)  # stands for next(sampler): must happen once per key, in order
        threads.add(threading.current_thread().name)
        return len(drawn), key

    pre = Prefetcher(prepare, next_key, enabled=enabled)
    keys = [(s, m) for s in range(3) for m in range(2)]
    got = [pre.get(k) for k in keys]
    pre.shutdown()
    assert [k for _, k in got] == keys and [n for n, _ in got] == list(range(1, 7))
    # with the thread, the key after the last may have been prepared (or cancelled) before shutdown
    assert drawn[: len(keys)] == keys and len(drawn) in ((6, 7) if enabled else (6,))
    assert any(t.startswith("prefetch") for t in threads) == enabled


def test_out_of_order_requests_and_worker_errors_surface():
    def prepare(key):
        if key == (1, 0):
            raise OSError("shard vanished")
        return key

    pre = Prefetcher(prepare, next_key)
    assert pre.get((0, 0)) == (0, 0)
    with pytest.raises(RuntimeError, match=r"prefetched \(0, 1\) but \(0, 0\)"):
        pre.get((0, 0))
    assert pre.get((0, 1)) == (0, 1)
    with pytest.raises(OSError, match="shard vanished"):
        pre.get((1, 0))
    pre.shutdown()
