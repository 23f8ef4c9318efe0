"""A mocked Lambda endpoint: moto in server mode on a free loopback port, in its own process.

The server is what ``moto.server.ThreadedMotoServer`` runs (moto's WSGI app on werkzeug's
threaded server), wrapped in a middleware that

* adds a fixed service time to every invoke, standing in for the tens of milliseconds a
  real Lambda ``Invoke`` call takes; with none, the mock is pure Python CPU work sharing
  the machine's cores with the client, and concurrency cannot show;
* counts the invokes and the most that were in flight at once (the concurrency bound);
* answers ``GET /_bench/stats`` with the counters, and ``POST /_bench/reset?latency_ms=N``
  with the counters so far, then sets the service time and zeroes them.

Run as ``python -m bench.mock_lambda``: prints the port, serves until stdin closes.
Lambda runs without Docker: the client sets moto's ``{"lambda": {"use_docker": false}}``
through ``POST /moto-api/config`` (moto's "simple" Lambda backend answers every invoke
without running code).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any

StartResponse = Callable[..., Any]
App = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class ServiceTime:
    def __init__(self, app: App) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.latency_s = 0.0
        self.in_flight = 0
        self.peak_in_flight = 0
        self.invokes = 0

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = str(environ.get("PATH_INFO", ""))
        if path.startswith("/_bench/"):
            return self._control(path, environ, start_response)
        if not path.endswith("/invocations"):
            return self.app(environ, start_response)
        with self.lock:
            self.in_flight += 1
            self.invokes += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            if self.latency_s:
                time.sleep(self.latency_s)
            return self.app(environ, start_response)
        finally:
            with self.lock:
                self.in_flight -= 1

    def _control(self, path: str, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        with self.lock:
            stats = {
                "invokes": self.invokes,
                "peak_in_flight": self.peak_in_flight,
                "latency_ms": self.latency_s * 1000,
                "cpu_s": time.process_time(),  # this process's CPU time so far
            }
            if path == "/_bench/reset":
                query = urllib.parse.parse_qs(str(environ.get("QUERY_STRING", "")))
                self.latency_s = float(query.get("latency_ms", ["0"])[0]) / 1000
                self.invokes = self.peak_in_flight = 0
        body = json.dumps(stats).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]


def main() -> int:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log line per request
    app = ServiceTime(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    threading.Thread(target=server.serve_forever, name="moto", daemon=True).start()
    print(server.server_port, flush=True)
    sys.stdin.read()  # serve until the parent closes our stdin
    server.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
