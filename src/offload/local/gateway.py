"""A local API Gateway: HTTP on 127.0.0.1 in, REST proxy events to the real handlers out.

Like the deployed API, the callback route demands a valid SigV4 signature (``AWS_IAM``);
the job routes accept a signed request as that key's tenant, or an unsigned one as the
tenant ``local``.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from offload import signing
from offload.observability import TRACE_HEADER, new_trace_header

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]

# API Gateway's own limit on a request body
MAX_PAYLOAD_BYTES = 10 * 1024 * 1024
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
    ) -> None:
        self.handlers = handlers
        self.credentials = credentials
        self.context_factory = context_factory or (lambda name: None)
        # one request at a time per function, as in one Lambda execution environment
        self._locks = {name: threading.Lock() for name in handlers}
        gateway = self

        class RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

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
        path, _, query = http.path.partition("?")
        length_text = http.headers.get("Content-Length") or "0"
        if not length_text.isdigit():
            return self._send(http, 400, {"message": "bad Content-Length"})
        length = int(length_text)
        if length > MAX_PAYLOAD_BYTES:
            http.close_connection = True
            return self._send(http, 413, {"message": "Request Too Long"})
        body = http.rfile.read(length) if length else b""

        if path == "/openapi.json" and http.command == "GET" and "openapi" in self.handlers:
            return self._reply(http, self.handlers["openapi"]({}, None))
        for route in ROUTES:
            match = route.pattern.match(path)
            if match and route.method == http.command:
                break
        else:
            known = any(r.pattern.match(path) for r in ROUTES)
            return self._send(http, 405 if known else 404, {"message": "Method Not Allowed" if known else "Not Found"})

        headers = {name.lower(): value for name, value in http.headers.items()}
        identity: dict[str, Any] = {"sourceIp": http.client_address[0], "userAgent": headers.get("user-agent")}
        if "authorization" in headers or route.iam:
            url = f"http://{headers.get('host', '')}{http.path!s}"
            problem = signing.verify(http.command, url, headers, body, self.credentials.get)
            if problem:
                return self._send(http, 403, {"message": f"Forbidden: {problem}"})
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
            "body": text if body or http.command != "GET" else None,
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

    def _send(self, http: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
        self._reply(
            http, {"statusCode": status, "headers": {"Content-Type": "application/json"}, "body": json.dumps(body)}
        )
