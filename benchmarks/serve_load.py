"""Load test of `lensgen serve` with the shipped model: a real server process on 127.0.0.1, hit by clients.

Phase 1: `--requests` concurrent requests (one image each, a distinct prompt and seed per request). Every
one must be answered 200, and the PNG each gets back must carry its own prompt and seed (none lost, none
duplicated, none swapped inside a batch). Reported: p50 / p95 / max latency, throughput, the mean batch
size the server formed (from /metrics), and the server's resident memory.
Phase 2: a burst of `--burst` concurrent requests, more than the queue holds: the excess must get 429 with
Retry-After, the rest 200, and the server's memory must stay flat (its peak is reported).

    OMP_NUM_THREADS=1 python benchmarks/serve_load.py                 # 64 + 256 requests, 64x64, 20 steps
    OMP_NUM_THREADS=1 python benchmarks/serve_load.py --steps 4 --requests 32 --burst 96 --json out.json
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import requests
from PIL import Image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of a process, MiB (Linux /proc)."""
    status = open(f"/proc/{pid}/status").read()
    get = lambda key: int(re.search(rf"^{key}:\s+(\d+) kB", status, re.M).group(1)) / 1024  # noqa: E731
    return get("VmRSS"), get("VmHWM")


def metrics(url: str) -> dict[str, float]:
    text = requests.get(f"{url}/metrics", timeout=30).text
    return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line and line[0] != "#"}


def one(url: str, k: int, size: str, steps: int) -> tuple[int, float, dict | None, str | None]:
    """One request; (status, seconds, the PNG's text for 200, Retry-After for 429)."""
    body = {"prompt": f"a photo of {['a red', 'a blue', 'a green', 'a yellow'][k % 4]} circle number {k}",
            "seed": 1000 + k, "size": size, "steps": steps}
    start = time.perf_counter()
    r = requests.post(f"{url}/v1/images/generations", json=body, timeout=600)
    seconds = time.perf_counter() - start
    if r.status_code != 200:
        return r.status_code, seconds, None, r.headers.get("Retry-After")
    (item,) = r.json()["data"]
    image = Image.open(io.BytesIO(base64.b64decode(item["b64_json"])))
    text = dict(image.text)
    ok = text["prompt"] == body["prompt"] and text["seed"] == str(body["seed"]) == str(item["seed"])
    return (200 if ok else -1), seconds, text, None


def burst(url: str, n: int, size: str, steps: int, pid: int) -> tuple[list, float, float]:
    """n requests at once (a thread each); the results, the wall time and the server's peak RSS meanwhile."""
    peak, done = [rss_mib(pid)[0]], threading.Event()

    def watch():
        while not done.wait(0.05):
            peak.append(rss_mib(pid)[0])

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    start = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(lambda k: one(url, k, size, steps), range(n)))
    wall = time.perf_counter() - start
    done.set()
    watcher.join()
    return results, wall, max(peak)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--burst", type=int, default=256, help="phase 2: more than --queue-size")
    ap.add_argument("--size", default="64x64")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-wait-ms", type=float, default=100)
    ap.add_argument("--queue-size", type=int, default=64)
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    if args.requests > args.queue_size:
        ap.error("--requests must fit in --queue-size (phase 1 expects every request answered)")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [sys.executable, "-m", "lensgen.cli", "serve", "--port", str(port), "--max-batch", str(args.max_batch),
           "--max-wait-ms", str(args.max_wait_ms), "--queue-size", str(args.queue_size), "--timeout-s", "600",
           "--log-level", "warning"]
    server = subprocess.Popen(cmd, env=env)
    try:
        for _ in range(600):
            try:
                if requests.get(f"{url}/healthz", timeout=1).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.2)
        else:
            raise RuntimeError("the server did not come up")
        one(url, -1, args.size, args.steps)  # warm-up
        rss_idle = rss_mib(server.pid)[0]
        before = metrics(url)
        results, wall, peak1 = burst(url, args.requests, args.size, args.steps, server.pid)
        after = metrics(url)
        statuses = [s for s, *_ in results]
        seen = {(t["prompt"], t["seed"]) for s, _, t, _ in results if s == 200}
        latencies = np.array([sec for s, sec, *_ in results if s == 200])
        calls = after["lensgen_batch_size_count"] - before["lensgen_batch_size_count"]
        images = after["lensgen_batch_size_sum"] - before["lensgen_batch_size_sum"]
        phase1 = {"requests": args.requests, "ok": statuses.count(200), "distinct_answers": len(seen),
                  "p50_s": float(np.percentile(latencies, 50)), "p95_s": float(np.percentile(latencies, 95)),
                  "max_s": float(latencies.max()), "wall_s": wall, "images_per_s": len(latencies) / wall,
                  "sampler_calls": int(calls), "mean_batch": images / calls, "rss_idle_mib": rss_idle,
                  "rss_peak_mib": peak1}
        results2, wall2, peak2 = burst(url, args.burst, args.size, args.steps, server.pid)
        codes = [s for s, *_ in results2]
        retry = [int(r) for s, _, _, r in results2 if s == 429]
        phase2 = {"requests": args.burst, "ok": codes.count(200), "rejected_429": codes.count(429),
                  "other": len(codes) - codes.count(200) - codes.count(429), "retry_after_s": sorted(set(retry)),
                  "wall_s": wall2, "rss_peak_mib": peak2, "rss_after_mib": rss_mib(server.pid)[0]}
    finally:
        server.terminate()
        server.wait(120)
    figures = {"size": args.size, "steps": args.steps, "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms,
               "queue_size": args.queue_size, "phase1": phase1, "phase2": phase2}
    print(json.dumps(figures, indent=2))
    if args.json:
        from lensgen.io import atomic_write_json

        atomic_write_json(args.json, figures)
    good = phase1["ok"] == phase1["distinct_answers"] == args.requests and phase1["mean_batch"] > 1 \
        and phase2["rejected_429"] > 0 and phase2["other"] == 0 and len(retry) == phase2["rejected_429"]
    print("PASS" if good else "FAIL: see the figures above", file=sys.stderr)
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
