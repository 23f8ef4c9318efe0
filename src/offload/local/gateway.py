"""A local API Gateway: HTTP on 127.0.0.1 in, REST proxy events to the real handlers out.

Like the deployed API, the callback route demands a valid SigV4 signature (``AWS_IAM``);
the job routes accept a signed request as that key's tenant, or an unsigned one as the
tenant ``local`` (``anonymous_jobs=False`` refuses those, as AWS_IAM on every route does).
Path parameters reach the handlers as sent (still percent-encoded, as REST APIs pass them
on). What the gateway answers itself (403, 404, 405, 413, and 502 when a handler fails)
is JSON with ``error`` and ``message``, like every handler's errors.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from offload import signing
from offload.observability import TRACE_HEADER, new_trace_header

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]

log = logging.getLogger(__name__)

# API Gateway's own limit on a request body
MAX_PAYLOAD_BYTES = 10 * 1024 * 1024
# a client that stops sending mid-request is dropped rather than holding a thread forever
READ_TIMEOUT_S = 30.0
LOCAL_ACCOUNT = "000000000000"


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    resource: str
    function: str  # "master" | "callback" | "openapi"
    iam: bool = False


ROUTES = (
    Route("POST", re.compile(r"^/jobs/?$"), "/jobs", "master"),
    Route("GET", re.compile(r"^/jobs/(?P<job_id>[^/]+)/?$"), "/jobs/{job_id}", "master"),
    Route("POST", re.compile(r"^/callbacks/(?P<job_id>[^/]+)/?$"), "/callbacks/{job_id}", "callback", iam=True),
)


class Gateway:
    def __init__(
        self,
        handlers: dict[str, Handler],
        credentials: dict[str, str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        context_factory: Callable[[str], Any] | None = None,
        anonymous_jobs: bool = True,
    ) -> None:
        self.handlers = handlers
        self.credentials = credentials
        self.anonymous_jobs = anonymous_jobs
        self.context_factory = context_factory or (lambda name: None)
        # one request at a time per function, as in one Lambda execution environment
        self._locks = {name: threading.Lock() for name in handlers}
        gateway = self

        class RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = READ_TIMEOUT_S
            # headers and body leave in separate writes: with Nagle on, the body waits for the
            # client's delayed ACK of the headers (~40 ms a request on Linux)
            disable_nagle_algorithm = True

            def do_GET(self) -> None:
                gateway.serve(self)

            def do_POST(self) -> None:
                gateway.serve(self)

            def do_PUT(self) -> None:
                gateway.serve(self)

            def do_DELETE(self) -> None:
                gateway.serve(self)

            def do_PATCH(self) -> None:
                gateway.serve(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
                # http.server's own refusals (a request line or header it cannot parse) in JSON too
                self.close_connection = True
                try:
                    phrase = HTTPStatus(code).phrase
                except ValueError:
                    phrase = "Error"
                gateway._send(self, code, re.sub(r"[^a-z]+", "_", phrase.lower()), message or phrase)

        self.server = ThreadingHTTPServer((host, port), RequestHandler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, name="gateway", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():  # shutdown() would wait forever for a loop that never ran
            self.server.shutdown()
        self.server.server_close()

    # -- one request ---------------------------------------------------------------------

    def serve(self, http: BaseHTTPRequestHandler) -> None:
        try:
            self._serve(http)
        except Exception:
            # API Gateway answers 502 when the integration fails; so does this gateway
            log.exception("local gateway: %s %s failed", http.command, http.path.partition("?")[0])
            http.close_connection = True
            with contextlib.suppress(OSError):
                self._send(http, 502, "bad_gateway", "Internal server error")

    def _serve(self, http: BaseHTTPRequestHandler) -> None:
        path, _, query = http.path.partition("?")
        if "chunked" in (http.headers.get("Transfer-Encoding") or "").lower():
            chunked = _read_chunked(http, MAX_PAYLOAD_BYTES)
            if chunked is None:
                http.close_connection = True
                return self._send(http, 413, "request_too_large", "Request Too Long")
            return self._route(http, path, query, chunked)
        length_text = http.headers.get("Content-Length") or "0"
        if not length_text.isdigit() or not length_text.isascii():
            http.close_connection = True
            return self._send(http, 400, "bad_request", "bad Content-Length")
        length = int(length_text)
        if length > MAX_PAYLOAD_BYTES:
            http.close_connection = True
            return self._send(http, 413, "request_too_large", "Request Too Long")
        body = http.rfile.read(length) if length else b""
        return self._route(http, path, query, body)

    def _route(self, http: BaseHTTPRequestHandler, path: str, query: str, body: bytes) -> None:
        if path == "/openapi.json" and http.command == "GET" and "openapi" in self.handlers:
            return self._reply(http, self.handlers["openapi"]({}, None))
        for route in ROUTES:
            match = route.pattern.match(path)
            if match and route.method == http.command:
                break
        else:
            if any(r.pattern.match(path) for r in ROUTES):
                return self._send(http, 405, "method_not_allowed", "Method Not Allowed")
            return self._send(http, 404, "not_found", "Not Found")

        headers = {name.lower(): value for name, value in http.headers.items()}
        identity: dict[str, Any] = {"sourceIp": http.client_address[0], "userAgent": headers.get("user-agent")}
        if "authorization" in headers or route.iam or not self.anonymous_jobs:
            url = f"http://{headers.get('host', '')}{http.path!s}"
            problem = signing.verify(http.command, url, headers, body, self.credentials.get)
            if problem:
                return self._send(http, 403, "forbidden", f"Forbidden: {problem}")
            key = signing.access_key(headers["authorization"])
            identity.update(
                accessKey=key, accountId=LOCAL_ACCOUNT, caller=key, userArn=f"arn:aws:iam::{LOCAL_ACCOUNT}:user/{key}"
            )
        else:
            identity.update(caller="local")

        if "x-amzn-trace-id" not in headers:
            # API Gateway (tracing on) starts a trace for every request that has none
            http.headers[TRACE_HEADER] = new_trace_header()
        event = self._event(http, route, match.groupdict(), path, query, body, identity)
        with self._locks[route.function]:
            response = self.handlers[route.function](event, self.context_factory(route.function))
        if not isinstance(response, dict) or not isinstance(response.get("statusCode", 200), int):
            raise TypeError(f"the {route.function} function returned no proxy response: {type(response).__name__}")
        self._reply(http, response)

    def _event(
        self,
        http: BaseHTTPRequestHandler,
        route: Route,
        params: dict[str, str],
        path: str,
        query: str,
        body: bytes,
        identity: dict[str, Any],
    ) -> dict[str, Any]:
        multi: dict[str, list[str]] = {}
        for name, value in http.headers.items():
            multi.setdefault(name, []).append(value)
        try:
            text, encoded = body.decode("utf-8"), False
        except UnicodeDecodeError:
            text, encoded = base64.b64encode(body).decode(), True
        request_id = str(uuid.uuid4())
        queries = [p.partition("=") for p in query.split("&") if p]
        return {
            "resource": route.resource,
            "path": path,
            "httpMethod": http.command,
            "headers": {name: values[-1] for name, values in multi.items()},
            "multiValueHeaders": multi,
            "queryStringParameters": {k: v for k, _, v in queries} or None,
            "multiValueQueryStringParameters": None,
            "pathParameters": params or None,
            "stageVariables": None,
            "requestContext": {
                "resourcePath": route.resource,
                "httpMethod": http.command,
                "path": path,
                "stage": "local",
                "requestId": request_id,
                "identity": identity,
                "accountId": LOCAL_ACCOUNT,
            },
            "body": text if body else None,  # API Gateway sends null, not "", for no body
            "isBase64Encoded": encoded,
        }

    def _reply(self, http: BaseHTTPRequestHandler, response: dict[str, Any]) -> None:
        body = response.get("body") or ""
        data = base64.b64decode(body) if response.get("isBase64Encoded") else str(body).encode()
        http.send_response(int(response.get("statusCode", 200)))
        for name, value in (response.get("headers") or {}).items():
            http.send_header(name, str(value))
        http.send_header("Content-Length", str(len(data)))
        http.end_headers()
        http.wfile.write(data)

    def _send(self, http: BaseHTTPRequestHandler, status: int, error: str, message: str) -> None:
        body = json.dumps({"error": error, "message": message})
        self._reply(http, {"statusCode": status, "headers": {"Content-Type": "application/json"}, "body": body})


def _read_chunked(http: BaseHTTPRequestHandler, limit: int) -> bytes | None:
    """A ``Transfer-Encoding: chunked`` body, or None past ``limit`` bytes (or when malformed)."""
    body = bytearray()
    while True:
        size_line = http.rfile.readline(1024).split(b";")[0].strip()
        try:
            size = int(size_line, 16)
        except ValueError:
            return None
        if size == 0:
            while http.rfile.readline(1024).strip():  # trailers, then the blank line
                pass
            return bytes(body)
        if len(body) + size > limit:
            return None
        body += http.rfile.read(size)
        http.rfile.readline(8)  # the CRLF after each chunk
