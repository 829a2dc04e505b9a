"""The HTTP API: OpenAI-Images-compatible generation, models, health, metrics, and the web page.

    POST /v1/images/generations   {"prompt", "n", "size", ...} -> {"created", "data": [{"b64_json", ...}]}
    GET  /v1/models               the served models (OpenAI's list form, with lensgen's defaults)
    GET  /healthz                 200 while serving, 503 while shutting down
    GET  /metrics                 Prometheus text: queue depth, batch sizes, latency, images served
    GET  /                        the web page (web/index.html; its script and style under /static/)

Errors use OpenAI's shape, {"error": {"message", "type", "param", "code"}}, so clients show the message.
With an API key set, /v1/* and /metrics need `Authorization: Bearer KEY` (compared in constant time,
never logged); the page and /healthz stay open, and the page asks for the key.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import time
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from lensgen.errors import UserError
from lensgen.reasoner.base import Reasoner, Rewrite
from lensgen.serve.batcher import Batcher, Closed, QueueFull
from lensgen.serve.config import ServeConfig
from lensgen.serve.host import ImageJob, ModelHost
from lensgen.serve.metrics import ServerMetrics
from lensgen.serve.schema import BadRequest, GenerationRequest, parse_request

log = logging.getLogger("lensgen.serve")
WEB_FILES = {"app.js": "text/javascript", "style.css": "text/css"}
# The page loads nothing from elsewhere; the browser enforces it.
CSP = "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; connect-src 'self'"


def error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
          headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}},
                        status_code=status, headers=headers)


def web_file(name: str) -> bytes:
    return resources.files("lensgen.serve").joinpath("web", name).read_bytes()


class Service:
    """The app's state: models, batcher, reasoners, metrics, and the generation flow."""

    def __init__(self, host: ModelHost, config: ServeConfig, reasoners: dict[str, Reasoner], api_key: str | None):
        self.host, self.config, self.reasoners, self.api_key = host, config, reasoners, api_key
        self.batcher = Batcher(host.run, config.max_batch, config.max_wait_ms / 1000, config.queue_size,
                               on_batch=self._on_batch)
        self.metrics = ServerMetrics(lambda: self.batcher.depth)
        self.closing = False

    def _on_batch(self, size: int, seconds: float) -> None:
        self.metrics.batch_size.observe(size)
        self.metrics.batch_seconds.observe(seconds)

    def authorised(self, request: Request) -> JSONResponse | None:
        """None when the request may pass; else the 401 to answer."""
        if self.api_key is None:
            return None
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            return error(401, "missing API key: send the header 'Authorization: Bearer <key>'",
                         kind="authentication_error", headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.strip().encode(), self.api_key.encode()):
            return error(401, "invalid API key", kind="authentication_error", headers={"WWW-Authenticate": "Bearer"})
        return None

    async def read_body(self, request: Request) -> object:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.config.max_body_bytes:
            raise BadRequest(f"the body is {int(declared):,} bytes; at most {self.config.max_body_bytes:,}",
                             status=413)
        raw = await request.body()
        if len(raw) > self.config.max_body_bytes:
            raise BadRequest(f"the body is {len(raw):,} bytes; at most {self.config.max_body_bytes:,}", status=413)
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            why = f"{err.msg} at line {err.lineno} column {err.colno}" if isinstance(err, json.JSONDecodeError) \
                else "not UTF-8"
            raise BadRequest(f'the body is not valid JSON ({why}); send an object such as '
                             f'{{"prompt": "a red circle", "size": "64x64"}}') from None

    def rewrite(self, req: GenerationRequest) -> list[Rewrite]:
        """One rewrite per image for a seeded planner (each seed its own layout), else one for all."""
        reasoner = self.reasoners[req.reasoner]
        aspect = req.width / req.height
        seeds = [req.seed + i for i in range(req.n)] if reasoner.seeded else [req.seed]
        made = [reasoner.rewrite(req.prompt, aspect, seed) for seed in seeds]
        for r in made:
            self.metrics.rewrites.inc(backend=r.backend, fallback=str(r.fallback).lower())
        return made if reasoner.seeded else made * req.n

    async def generate(self, request: Request) -> Response:
        start = time.monotonic()
        try:
            req = parse_request(await self.read_body(request), self.host.defaults, self.config,
                                tuple(self.reasoners), self.host.guided)
            async with asyncio.timeout(self.config.timeout_s):
                rewrites = await run_in_threadpool(self.rewrite, req)
                jobs = [ImageJob(req.prompt, r.text, req.negative_prompt, req.seed + i) for i, r in enumerate(rewrites)]
                futures = self.batcher.submit(req.batch_key, jobs)
                try:
                    pngs = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
                finally:
                    for f in futures:
                        f.cancel()  # no-op for those done; a timed-out request's images are never sampled
        except BadRequest as err:
            return error(err.status, str(err), err.param)
        except QueueFull as err:
            return error(429, f"the server is busy ({self.config.queue_size} images queued at most); retry in "
                              f"{err.retry_after_s} s", kind="rate_limit_error",
                         headers={"Retry-After": str(err.retry_after_s)})
        except Closed:
            return error(503, "the server is shutting down", kind="server_error")
        except TimeoutError:
            return error(504, f"no image within the server's {self.config.timeout_s:g} s timeout (queue and "
                              f"sampling); try fewer steps, a smaller size or fewer images", kind="server_error")
        except UserError as err:
            return error(400, str(err))
        except Exception as err:  # a failed sampler call: this request fails, the server goes on
            log.exception("generation failed")
            return error(500, f"generation failed: {type(err).__name__}: {err}", kind="server_error")
        seconds = time.monotonic() - start
        self.metrics.latency.observe(seconds)
        self.metrics.images.inc(len(pngs))
        data = [{"b64_json": base64.b64encode(png).decode("ascii"), "revised_prompt": r.text, "seed": req.seed + i}
                for i, (png, r) in enumerate(zip(pngs, rewrites))]
        fallback = next((r.reason for r in rewrites if r.fallback), None)
        return JSONResponse({
            "created": int(time.time()), "data": data, "model": req.model, "size": f"{req.width}x{req.height}",
            "output_format": "png",
            "lensgen": {"steps": req.steps, "cfg": req.cfg, "classifier_scale": req.classifier_scale,
                        "seed": req.seed, "negative_prompt": req.negative_prompt, "reasoner": req.reasoner,
                        "reasoner_fallback": fallback, "seconds": round(seconds, 3)},
        })


def create_app(host: ModelHost, config: ServeConfig | None = None, reasoners: dict[str, Reasoner] | None = None,
               api_key: str | None = None) -> FastAPI:
    """The app over `host`'s models. reasoners: the backends requests may name (default: none and shapes)."""
    from lensgen.reasoner.base import NoReasoner
    from lensgen.reasoner.shapes import ShapesReasoner

    config = config or ServeConfig()
    reasoners = reasoners if reasoners is not None else {"none": NoReasoner(), "shapes": ShapesReasoner()}
    if config.reasoner not in reasoners:
        raise UserError(f"the default reasoner {config.reasoner!r} is not one of this server's: "
                        f"{', '.join(reasoners)}")
    service = Service(host, config, reasoners, api_key or None)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        service.batcher.start()
        yield
        service.closing = True  # uvicorn has let the requests in flight finish; drain what they queued
        await run_in_threadpool(service.batcher.close)

    app = FastAPI(title="lensgen", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service

    def codes(status: int) -> None:
        service.metrics.requests.inc(status=str(status))

    @app.post("/v1/images/generations")
    async def generations(request: Request) -> Response:
        response = service.authorised(request) or await service.generate(request)
        codes(response.status_code)
        return response

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        if denied := service.authorised(request):
            return denied
        return JSONResponse({"object": "list", "reasoners": list(service.reasoners),
                             "default_reasoner": config.reasoner,
                             "data": [{"id": name, "object": "model", "created": 0, "owned_by": "lensgen",
                                       "lensgen": host.describe(name)} for name in host.pipelines]})

    @app.get("/healthz")
    async def healthz() -> Response:
        if service.closing:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        return JSONResponse({"status": "ok", "models": list(host.pipelines), "queue_depth": service.batcher.depth,
                             "auth": service.api_key is not None})

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        if denied := service.authorised(request):
            return denied
        return PlainTextResponse(service.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/")
    async def page() -> Response:
        return Response(web_file("index.html"), media_type="text/html; charset=utf-8",
                        headers={"Content-Security-Policy": CSP})

    @app.get("/static/{name}")
    async def static(name: str) -> Response:
        if name not in WEB_FILES:
            return error(404, f"no such file: {name}", kind="not_found_error")
        return Response(web_file(name), media_type=WEB_FILES[name], headers={"Cache-Control": "no-cache"})

    return app
