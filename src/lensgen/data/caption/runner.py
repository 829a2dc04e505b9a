"""Dense re-captioning of WebDataset shards through an OpenAI-compatible VLM endpoint, resumable.

For each input shard (in order; a curation OUT folder is read through its `shards/`): every image is
captioned with bounded concurrency (cache first, then the endpoint with retries), then the shard is
written again to OUT/shards with all its members plus `dense.txt` for the images that got a good
caption, then OUT/captions/<shard>.parquet records every sample's outcome. The existing short caption
(`txt`) stays beside the dense one, so short / dense / mixed captions can be compared in training.
A shard whose parquet exists is done: re-running skips it (`retry_failed` redoes the shards that had
failures; good captions come back from the cache for free). Failed samples are recorded, never
written with a caption.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from lensgen.data.caption.cache import CaptionCache
from lensgen.data.caption.checks import check_caption, clean_caption
from lensgen.data.caption.client import (
    AuthError,
    ChatClient,
    RejectedError,
    TransientError,
    backoff_seconds,
    image_data_url,
    redact,
)
from lensgen.data.caption.config import CaptionConfig, Endpoint, resolve_endpoint
from lensgen.data.caption.prompt import DENSE_PROMPT
from lensgen.data.curate.inputs import IMAGE_MEMBER_EXTS
from lensgen.data.shards import iter_samples, list_shards, write_shard
from lensgen.errors import UserError
from lensgen.io import atomic_open, atomic_write_json

log = logging.getLogger("lensgen.caption")

PART_SCHEMA = pa.schema([
    pa.field("shard", pa.string()), pa.field("key", pa.string()), pa.field("image_sha256", pa.string()),
    pa.field("status", pa.string()), pa.field("reason", pa.string()), pa.field("requests", pa.int32()),
    pa.field("cached", pa.bool_()), pa.field("words", pa.int32()), pa.field("caption_dense", pa.string()),
    pa.field("caption_short", pa.string()),
])


@dataclass
class Outcome:
    status: str  # "ok" or "failed"
    caption: str | None = None
    reason: str | None = None
    requests: int = 0
    cached: bool = False
    image_sha256: str | None = None


class Captioner:
    """Captions one image: cache, then the endpoint, with retries on transient errors and bad answers."""

    def __init__(self, config: CaptionConfig, endpoint: Endpoint, cache: CaptionCache):
        self.config, self.endpoint, self.cache = config, endpoint, cache
        self.client = ChatClient(endpoint, config.timeout_s)
        self.prompt = config.prompt or DENSE_PROMPT
        self.stopped = threading.Event()

    def caption(self, key: str, data: bytes) -> Outcome:
        cfg = self.config
        sha = hashlib.sha256(data).hexdigest()
        hit = self.cache.get(sha, cfg.prompt_version)
        if hit is not None:
            return Outcome("ok", hit["caption"], cached=True, image_sha256=sha)
        try:
            url = image_data_url(data, cfg.image_max_side, cfg.image_quality)
        except Exception as err:
            return Outcome("failed", reason=f"undecodable image: {type(err).__name__}", image_sha256=sha)
        requests_made = transient = bad = 0
        while not self.stopped.is_set():
            requests_made += 1
            try:
                reply = self.client.complete(self.prompt, url, cfg.max_tokens, cfg.temperature)
            except TransientError as err:
                transient += 1
                if transient > cfg.max_retries:
                    return Outcome("failed", reason=f"gave up after {requests_made} requests: {err}",
                                   requests=requests_made, image_sha256=sha)
                delay = backoff_seconds(transient, cfg.backoff_base_s, cfg.backoff_max_s, err.retry_after)
                log.warning("%s: %s; retry %d/%d in %.2f s", key, redact(str(err), self.endpoint.secret),
                            transient, cfg.max_retries, delay)
                time.sleep(delay)
                continue
            except RejectedError as err:
                return Outcome("failed", reason=str(err), requests=requests_made, image_sha256=sha)
            except AuthError:
                self.stopped.set()
                raise
            text = clean_caption(reply.text)
            reason = check_caption(text, cfg.min_words, cfg.max_words, reply.finish_reason, reply.refusal)
            if reason is None:
                self.cache.put(sha, cfg.prompt_version, {"caption": text, "model": self.endpoint.model})
                return Outcome("ok", text, requests=requests_made, image_sha256=sha)
            bad += 1
            log.info("%s: unusable answer (%s), try %d of %d", key, reason, bad, cfg.max_bad_answers + 1)
            if bad > cfg.max_bad_answers:
                return Outcome("failed", reason=reason, requests=requests_made, image_sha256=sha)
        return Outcome("failed", reason="run stopped", requests=requests_made, image_sha256=sha)


def _image_member(sample: dict[str, Any]) -> bytes | None:
    members = {k.lower(): v for k, v in sample.items() if not k.startswith("__")}
    return next((members[e] for e in IMAGE_MEMBER_EXTS if e in members), None)


def input_shards(path: str | Path) -> list[Path]:
    path = Path(path)
    if (path / "shards").is_dir():  # a curation output folder
        path = path / "shards"
    if not path.exists():
        raise UserError(f"input not found: {path} (expected WebDataset shards or a curation output folder)")
    shards = list_shards(path)
    if not shards:
        raise UserError(f"no .tar shards in {path}")
    return shards


def _caption_shard(shard: Path, pool: ThreadPoolExecutor, captioner: Captioner, bar: tqdm) -> list[Outcome]:
    """Outcomes in sample order; at most 2 x concurrency images held in memory."""
    outcomes: dict[int, Outcome] = {}
    inflight: deque = deque()
    limit = 2 * captioner.config.concurrency

    def settle(index, future):
        try:
            outcomes[index] = future.result()
        except AuthError as err:
            for _, other in inflight:
                other.cancel()
            raise UserError(f"captioning stopped: {err}; check {captioner.config.api_key_env}") from None
        bar.update(1)

    for index, sample in enumerate(iter_samples(shard, decode=None)):
        data = _image_member(sample)
        if data is None:
            outcomes[index] = Outcome("failed", reason="no image member in the sample")
            bar.update(1)
            continue
        inflight.append((index, pool.submit(captioner.caption, sample["__key__"], data)))
        while len(inflight) >= limit:
            settle(*inflight.popleft())
    while inflight:
        settle(*inflight.popleft())
    return [outcomes[i] for i in range(len(outcomes))]


def _output_record(sample: dict[str, Any], outcome: Outcome, endpoint: Endpoint, prompt_version: str) -> dict:
    record = {k: v for k, v in sample.items() if k == "__key__" or not k.startswith("__")}
    record["dense.txt"] = outcome.caption
    if "json" in record:
        try:
            meta = json.loads(record["json"])
            if isinstance(meta, dict):
                meta["dense_caption"] = {"model": endpoint.model, "prompt_version": prompt_version,
                                         "words": len(outcome.caption.split())}
                record["json"] = meta
        except ValueError:
            pass
    return record


def run_captioning(input_path: str | Path, out_dir: str | Path, config: CaptionConfig,
                   retry_failed: bool = False) -> dict[str, Any]:
    endpoint = resolve_endpoint(config)
    shards = input_shards(input_path)
    out = Path(out_dir)
    (out / "captions").mkdir(parents=True, exist_ok=True)
    cache = CaptionCache(config.cache_dir or out / "cache")
    atomic_write_json(out / "caption_run.json", {
        "input": str(Path(input_path).resolve()), "shards": [s.name for s in shards], "model": endpoint.model,
        "endpoint": redact(endpoint.url, endpoint.secret), "prompt_version": config.prompt_version,
        "config": {k: v for k, v in asdict(config).items() if k != "prompt"},
    })
    captioner = Captioner(config, endpoint, cache)
    todo = []
    for shard in shards:
        part = out / "captions" / f"{shard.stem}.parquet"
        if part.exists():
            statuses = pq.read_table(part, columns=["status"])["status"].to_pylist()
            if not (retry_failed and "failed" in statuses):
                continue
        todo.append(shard)
    with ThreadPoolExecutor(config.concurrency, thread_name_prefix="caption") as pool, \
            tqdm(desc="caption", unit="img", disable=not config.progress) as bar:
        for shard in todo:
            outcomes = _caption_shard(shard, pool, captioner, bar)
            rows: list[dict[str, Any]] = []

            def good_records(shard=shard, outcomes=outcomes, rows=rows):
                # a second streaming pass: the shard is never held in memory whole
                for sample, outcome in zip(iter_samples(shard, decode=None), outcomes):
                    short = sample.get("txt")
                    rows.append({
                        "shard": shard.name, "key": sample["__key__"], "image_sha256": outcome.image_sha256,
                        "status": outcome.status, "reason": outcome.reason, "requests": outcome.requests,
                        "cached": outcome.cached,
                        "words": len(outcome.caption.split()) if outcome.caption else None,
                        "caption_dense": outcome.caption,
                        "caption_short": short.decode("utf-8", "replace").strip() if short else None,
                    })
                    if outcome.status == "ok":
                        yield _output_record(sample, outcome, endpoint, config.prompt_version)

            write_shard(out / "shards" / shard.name, good_records())
            if len(rows) != len(outcomes):
                raise RuntimeError(f"input shard {shard} changed while it was being captioned")
            with atomic_open(out / "captions" / f"{shard.stem}.parquet", "wb") as f:
                pq.write_table(pa.Table.from_pylist(rows, schema=PART_SCHEMA), f)
    summary = caption_summary(out)
    atomic_write_json(out / "caption_summary.json", summary)
    return summary


def caption_summary(out_dir: str | Path) -> dict[str, Any]:
    """Outcome counts, failure reasons and caption lengths, from OUT/captions/*.parquet."""
    out = Path(out_dir)
    parts = sorted((out / "captions").glob("*.parquet"))
    rows = pa.concat_tables([pq.read_table(p) for p in parts]).to_pylist() if parts else []
    run = json.loads((out / "caption_run.json").read_text()) if (out / "caption_run.json").exists() else {}
    words = np.asarray([r["words"] for r in rows if r["status"] == "ok"], float)
    reasons = Counter(r["reason"].split(":")[0] for r in rows if r["status"] == "failed")
    return {
        "shards_done": len(parts), "shards_total": len(run.get("shards", [])) or None,
        "samples": len(rows), "ok": sum(r["status"] == "ok" for r in rows),
        "failed": sum(r["status"] == "failed" for r in rows), "cached": sum(bool(r["cached"]) for r in rows),
        "requests": sum(r["requests"] or 0 for r in rows),
        "with_short_caption": sum(r["caption_short"] is not None for r in rows),
        "words_mean": round(float(words.mean()), 1) if len(words) else None,
        "words_p5_p50_p95": [round(float(x), 1) for x in np.percentile(words, [5, 50, 95])] if len(words) else None,
        "failure_reasons": dict(reasons.most_common()),
        "model": run.get("model"), "prompt_version": run.get("prompt_version"),
    }
