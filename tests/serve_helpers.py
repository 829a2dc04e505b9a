"""A real uvicorn on 127.0.0.1 in a thread, for the serving tests (port 0: any free port)."""

import contextlib
import threading
import time

import uvicorn

from lensgen.serve.host import ModelHost


@contextlib.contextmanager
def running(app, log_level: str = "info"):
    """Yields (server, base URL); on exit asks uvicorn to stop as SIGTERM does and waits for it."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level=log_level,
                                           timeout_graceful_shutdown=60))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield server, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(60)


class GatedHost(ModelHost):
    """The real model behind a gate: each sampler call waits until the test opens it, and is recorded."""

    def __init__(self, pipelines):
        super().__init__(pipelines)
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.calls: list[list] = []

    def run(self, key, jobs):
        self.calls.append(list(jobs))
        self.entered.set()
        self.gate.wait(60)
        return super().run(key, jobs)
