"""`lensgen serve`: load the models, build the app, run uvicorn until Ctrl-C / SIGTERM (which lets the
requests in flight finish)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

from lensgen.errors import LensgenWarning, UserError

HELP = """Serve one or more model folders over HTTP: an OpenAI-Images-compatible API
(POST /v1/images/generations, GET /v1/models), /healthz, Prometheus /metrics, and a web page at /.
Concurrent requests with the same model, size, steps and CFG are sampled together (dynamic batching);
at most --queue-size images wait, beyond that requests get 429 with Retry-After. Binds to 127.0.0.1
unless --host says otherwise; set --api-key-env to require 'Authorization: Bearer KEY'."""


def build_config(args: argparse.Namespace):
    from lensgen.config import load_config
    from lensgen.serve.config import ServeConfig

    flags = {k: getattr(args, k) for k in ("host", "port", "max_batch", "max_wait_ms", "queue_size", "timeout_s",
                                           "max_n", "reasoner", "api_key_env") if getattr(args, k) is not None}
    return load_config(ServeConfig, args.config, [*args.set, *flags.items()])


def api_key(config) -> str | None:
    if config.api_key_env is None:
        return None
    key = os.environ.get(config.api_key_env)
    if not key:
        raise UserError(f"--api-key-env {config.api_key_env}: that environment variable is empty or unset; "
                        f"export it with the key clients must send")
    return key


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_serve(args: argparse.Namespace) -> int:
    import warnings

    config = build_config(args)
    key = api_key(config)
    from lensgen.inference.pipeline import DEFAULT_MODEL_DIR, check_device, read_defaults

    check_device(args.device)
    folders = args.model or [DEFAULT_MODEL_DIR]
    for folder in folders:
        read_defaults(folder)  # a wrong folder fails now, before any weights load
    reasoners = reasoner_backends(args, config)
    if not is_loopback(config.host) and key is None:
        warnings.warn(f"serving on {config.host} without an API key: anyone who can reach this port can use it "
                      f"(set --api-key-env)", LensgenWarning, stacklevel=1)
    import uvicorn

    from lensgen.serve.api import create_app
    from lensgen.serve.host import ModelHost

    host = ModelHost.load(folders, device=args.device)
    app = create_app(host, config, reasoners, key)
    shown = f"[{config.host}]" if ":" in config.host else config.host
    print(f"lensgen serve: {', '.join(host.pipelines)} on http://{shown}:{config.port}/ (the page; API under "
          f"/v1/, Ctrl-C stops after the requests in flight)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=config.host, port=config.port, log_level=args.log_level,
                timeout_graceful_shutdown=int(config.timeout_s) + 5)
    return 0


def reasoner_backends(args: argparse.Namespace, config) -> dict:
    """none and shapes always; llm when an endpoint is configured (--reasoner-config, or the environment)."""
    from lensgen.reasoner.base import NoReasoner
    from lensgen.reasoner.shapes import ShapesReasoner

    backends = {"none": NoReasoner(), "shapes": ShapesReasoner()}
    wants_llm = args.reasoner_config or config.reasoner == "llm" or os.environ.get("LENSGEN_REASONER_BASE_URL")
    if wants_llm:
        from lensgen.config import load_config
        from lensgen.reasoner.llm import LLMReasoner, ReasonerConfig

        backends["llm"] = LLMReasoner(load_config(ReasonerConfig, args.reasoner_config))
    return backends


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    from lensgen.config import add_config_arguments

    p = groups[""].add_parser("serve", help="serve models over HTTP (OpenAI Images API + web page)", description=HELP)
    p.add_argument("--model", action="append", metavar="DIR",
                   help="a model folder (repeatable: the first is the default); default: the shipped Shapes model")
    p.add_argument("--host", help="address to bind (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--max-batch", type=int, help="images per sampler call (default 8)")
    p.add_argument("--max-wait-ms", type=float, help="how long an image waits for others to share its call "
                                                     "(default 50)")
    p.add_argument("--queue-size", type=int, help="images waiting or sampling before 429s (default 64)")
    p.add_argument("--timeout-s", type=float, help="per request, queue and sampling (default 120); then 504")
    p.add_argument("--max-n", type=int, help="images per request (default 4)")
    p.add_argument("--reasoner", choices=("none", "shapes", "llm"),
                   help="the reasoner for requests that name none (default none); requests may ask for another")
    p.add_argument("--reasoner-config", metavar="FILE",
                   help="YAML of the llm reasoner (base_url, model, api_key_env, timeout_s, ...); the llm backend "
                        "is also on when LENSGEN_REASONER_BASE_URL is set")
    p.add_argument("--api-key-env", metavar="NAME",
                   help="require 'Authorization: Bearer KEY' on /v1/* and /metrics, KEY read from this "
                        "environment variable (never from the command line, never logged)")
    p.add_argument("--device", default=None, help="torch device, e.g. cuda (default: cpu)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                   help="uvicorn's log level (default info; the access log shows paths, never headers)")
    add_config_arguments(p, "configs/serve.yaml (fields of ServeConfig)")
    p.set_defaults(func=cmd_serve)
