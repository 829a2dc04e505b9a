"""The batcher on its own: grouping by key, max batch, bounded queue, cancellation, errors, draining."""

import threading
import time

import pytest

from lensgen.serve.batcher import Batcher, Closed, QueueFull


class Runner:
    """Records each call's (key, payloads); the first call waits for `gate` so work piles up behind it."""

    def __init__(self):
        self.calls, self.gate, self.entered = [], threading.Event(), threading.Event()

    def __call__(self, key, payloads):
        self.calls.append((key, list(payloads)))
        self.entered.set()
        self.gate.wait(10)
        if "boom" in payloads:
            raise RuntimeError("sampler exploded")
        return [f"{key}:{p}" for p in payloads]


def test_waiting_jobs_share_calls_by_key_up_to_max_batch_in_arrival_order():
    run = Runner()
    b = Batcher(run, max_batch=3, max_wait_s=0.0, max_queue=20).start()
    first = b.submit("A", ["a0"])
    assert run.entered.wait(5)  # the worker is inside call 1; everything below waits behind it
    futures = b.submit("A", ["a1", "a2"]) + b.submit("B", ["b0"]) + b.submit("A", ["a3", "a4"]) + b.submit("B", ["b1"])
    assert b.depth == 7
    run.gate.set()
    results = [f.result(5) for f in first + futures]
    assert results == ["A:a0", "A:a1", "A:a2", "B:b0", "A:a3", "A:a4", "B:b1"]  # each its own result
    assert run.calls == [("A", ["a0"]), ("A", ["a1", "a2", "a3"]), ("B", ["b0", "b1"]), ("A", ["a4"])]
    b.close(5)
    assert b.depth == 0 and not b.thread.is_alive()


def test_max_wait_gathers_company_for_the_first_job():
    run = Runner()
    run.gate.set()
    b = Batcher(run, max_batch=4, max_wait_s=5.0, max_queue=20).start()
    futures = [f for k in range(4) for f in b.submit("K", [k])]  # the 4th fills the batch: no 5 s wait
    assert [f.result(4) for f in futures] == ["K:0", "K:1", "K:2", "K:3"]
    assert run.calls == [("K", [0, 1, 2, 3])]
    b.close(5)


def test_queue_is_bounded_in_images_and_refusal_is_whole():
    run = Runner()
    b = Batcher(run, max_batch=2, max_wait_s=0.0, max_queue=4).start()
    b.submit("A", ["x"])
    assert run.entered.wait(5)
    b.submit("A", ["y", "z"])
    with pytest.raises(QueueFull) as err:
        b.submit("A", ["p", "q"])  # 3 + 2 > 4: none of the two is queued
    assert err.value.retry_after_s >= 1 and b.depth == 3
    b.submit("A", ["w"])  # exactly full is allowed
    run.gate.set()
    b.close(5)
    assert sum(len(p) for _, p in run.calls) == 4


def test_cancelled_jobs_leave_the_queue_and_are_never_run():
    run = Runner()
    b = Batcher(run, max_batch=8, max_wait_s=0.0, max_queue=8).start()
    b.submit("A", ["first"])
    assert run.entered.wait(5)
    doomed = b.submit("A", ["gone1", "gone2"])
    kept = b.submit("A", ["kept"])
    assert all(f.cancel() for f in doomed) and b.depth == 2
    run.gate.set()
    assert kept[0].result(5) == "A:kept"
    b.close(5)
    assert all("gone" not in p for _, payloads in run.calls for p in payloads)


def test_a_failing_call_fails_its_jobs_and_the_worker_goes_on():
    run = Runner()
    run.gate.set()
    b = Batcher(run, max_batch=2, max_wait_s=0.0, max_queue=8).start()
    bad = b.submit("A", ["boom"])
    with pytest.raises(RuntimeError, match="exploded"):
        bad[0].result(5)
    assert b.submit("A", ["fine"])[0].result(5) == "A:fine"
    b.close(5)


def test_close_finishes_accepted_work_and_refuses_new():
    run = Runner()
    b = Batcher(run, max_batch=1, max_wait_s=0.0, max_queue=8).start()
    futures = b.submit("A", [0, 1, 2])
    assert run.entered.wait(5)
    closer = threading.Thread(target=b.close)
    closer.start()
    time.sleep(0.05)
    with pytest.raises(Closed):
        b.submit("A", [3])
    run.gate.set()
    closer.join(5)
    assert [f.result(0) for f in futures] == ["A:0", "A:1", "A:2"] and not b.thread.is_alive()
