"""Prometheus metrics in the text exposition format (version 0.0.4), kept in-process and thread-safe.

Small on purpose: counters (by label), gauges read at scrape time, and cumulative histograms are all a
server needs here, and a per-app registry keeps several test servers in one process apart.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from collections.abc import Callable

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    esc = (v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for _, v in pairs)
    return "{" + ",".join(f'{k}="{v}"' for (k, _), v in zip(pairs, esc)) + "}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


class Counter:
    def __init__(self, name: str, help_text: str):
        self.name, self.help, self.values = name, help_text, defaultdict(float)
        self.lock = threading.Lock()

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        with self.lock:
            self.values[tuple(sorted(labels.items()))] += amount

    def value(self, **labels: str) -> float:
        return self.values.get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> list[str]:
        with self.lock:
            items = sorted(self.values.items()) or [((), 0.0)]
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter",
                *(f"{self.name}{_labels(k)} {_num(v)}" for k, v in items)]


class Gauge:
    """A value read when scraped (e.g. the queue's length)."""

    def __init__(self, name: str, help_text: str, read: Callable[[], float]):
        self.name, self.help, self.read = name, help_text, read

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge", f"{self.name} {_num(self.read())}"]


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...]):
        self.name, self.help, self.buckets = name, help_text, tuple(sorted(buckets))
        self.counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self.lock:
            self.counts[bisect.bisect_left(self.buckets, value)] += 1
            self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def render(self) -> list[str]:
        with self.lock:
            counts, total = list(self.counts), self.sum
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        running = 0
        for bound, c in zip([*map(_num, self.buckets), "+Inf"], counts):
            running += c
            lines.append(f'{self.name}_bucket{{le="{bound}"}} {running}')
        return [*lines, f"{self.name}_sum {_num(total)}", f"{self.name}_count {running}"]


class Registry:
    def __init__(self):
        self.metrics: list[Counter | Gauge | Histogram] = []

    def add(self, metric):
        self.metrics.append(metric)
        return metric

    def render(self) -> str:
        return "\n".join(line for m in self.metrics for line in m.render()) + "\n"


class ServerMetrics:
    """The server's metrics; the queue-depth gauge reads `queue_depth()` at scrape time."""

    def __init__(self, queue_depth: Callable[[], float]):
        self.registry = Registry()
        add = self.registry.add
        add(Gauge("lensgen_queue_depth", "Images waiting or being sampled.", queue_depth))
        self.batch_size = add(Histogram("lensgen_batch_size", "Images per sampler call.", BATCH_BUCKETS))
        self.batch_seconds = add(Histogram("lensgen_batch_seconds", "Seconds per sampler call.", LATENCY_BUCKETS))
        self.latency = add(Histogram("lensgen_request_seconds",
                                     "Seconds from a generation request's arrival to its answer (200 only).",
                                     LATENCY_BUCKETS))
        self.images = add(Counter("lensgen_images_served_total", "Images returned to clients."))
        self.requests = add(Counter("lensgen_requests_total", "Generation requests answered, by HTTP status."))
        self.rewrites = add(Counter("lensgen_rewrites_total",
                                    "Reasoner rewrites, by backend and whether it fell back to the prompt."))

    def render(self) -> str:
        return self.registry.render()
