"""A chat-completions server on 127.0.0.1 whose behaviour depends on the prompt's first word (the scenario):
the hostile endpoint the LLM reasoner is tested against (429, 5xx, slow, malformed, refusals, truncation)."""

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KEY = "sk-reasoner-DO-NOT-LEAK-777"

GOOD = ("A small red wooden boat floats in the middle of a calm blue lake at dawn, its white sail catching "
        "the first light, while two grey herons stand on a sandy bank to the left and soft pine-covered hills "
        "fade into the pale pink sky behind them, painted in a gentle watercolour style.")



class JSONHandler(BaseHTTPRequestHandler):
    """A quiet request handler with one way to answer JSON (the local test servers share it)."""

    def log_message(self, *args):
        pass

    def reply(self, status, body, headers=None):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


class CountingServer:
    """A threading test server that counts the requests in flight at once (`max_inflight`).

    The first request waits, at most `hold_s`, for a second one to arrive: a client that sends
    concurrently is then seen doing so however the two cores schedule its threads (without the wait a
    busy machine can serialise them and a correct client reads as serial), while a serial client still
    leaves `max_inflight` at 1. `hold_s` stays below the clients' 0.3 s timeout in the tests.
    Subclasses set their own state, call `super().__init__()` and implement `handle`.
    """

    def __init__(self, hold_s: float = 0.15):
        self.inflight = self.max_inflight = self.requests = 0
        self.hold_s = hold_s
        self._count_lock = threading.Lock()
        self._overlap = threading.Event()
        outer = self

        class Handler(JSONHandler):
            def do_POST(self):
                outer.count(self)
                try:
                    outer.handle(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and hung up
                finally:
                    outer.uncount(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def count(self, h):
        with self._count_lock:
            self.inflight += 1
            self.requests += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
            first = self.requests == 1
            if self.inflight > 1:
                self._overlap.set()
        h.counted = True
        if first:
            self._overlap.wait(self.hold_s)

    def uncount(self, h):
        """Stop counting `h` as in flight (also for a handler that sleeps past the client's timeout)."""
        with self._count_lock:
            if h.counted:
                self.inflight -= 1
                h.counted = False

    def handle(self, h):
        raise NotImplementedError

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class ChatServer:

    def __init__(self):
        self.calls: Counter = Counter()
        self.bodies: list[dict] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(JSONHandler):
            def do_POST(self):
                try:
                    outer.handle(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def handle(self, h):
        body = json.loads(h.rfile.read(int(h.headers["Content-Length"])))
        if h.headers.get("Authorization") != f"Bearer {KEY}":
            return h.reply(401, {"error": {"message": "bad key"}})
        prompt = body["messages"][-1]["content"][0]["text"]
        scenario = prompt.split()[0]
        with self.lock:
            self.calls[scenario] += 1
            self.bodies.append(body)
            attempt = self.calls[scenario]
        text = GOOD
        if scenario == "quoted":  # first answer drops the quoted text, the second keeps it
            text = GOOD if attempt == 1 else GOOD + ' A sign on the boat reads "SEA BREEZE".'
        answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                               "finish_reason": "stop"}]}
        if scenario == "ratelimited" and attempt == 1:
            return h.reply(429, {"error": "slow down"}, {"Retry-After": "0"})
        if scenario == "flaky" and attempt <= 2:
            return h.reply(502, b"bad gateway")
        if scenario == "slow" and attempt == 1:
            time.sleep(0.6)
        if scenario == "malformed" and attempt == 1:
            return h.reply(200, b"<html>oops</html>")
        if scenario == "down":
            return h.reply(503, b"unavailable")
        if scenario == "refuses":
            answer["choices"][0]["message"]["content"] = "I'm sorry, but I can't help with that request."
        if scenario == "truncated" and attempt == 1:
            answer["choices"][0]["finish_reason"] = "length"
        if scenario == "terse" and attempt == 1:
            answer["choices"][0]["message"]["content"] = "A boat."
        if scenario == "fenced":
            answer["choices"][0]["message"]["content"] = f'Caption: "{GOOD}"'
        return h.reply(200, answer)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
