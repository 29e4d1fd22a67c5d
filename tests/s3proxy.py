"""A fault-injecting HTTP proxy on 127.0.0.1 in front of the moto S3 server.

Clients reach it through ``AWS_ENDPOINT_URL`` like any S3 endpoint. Each request is forwarded
unchanged unless a :class:`Fault` matches it: then the proxy answers with an S3 error (503 SlowDown,
500 InternalError, 403 AccessDenied …), stalls before forwarding (a slow or hung server), or drops
the connection without an answer. Every fault fires a bounded number of times, and the proxy
records every request (time, method, path, what it did) so tests can check what was retried.
"""

from __future__ import annotations

import http.client
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

S3_ERRORS = {503: "SlowDown", 500: "InternalError", 403: "AccessDenied", 404: "NoSuchKey"}
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection",
              "content-length"}


@dataclass
class Fault:
    """What to do to matching requests: ``error`` (an S3 error with ``status``), ``delay`` (sleep
    ``seconds``, then forward) or ``drop`` (close the connection, no answer).

    ``path`` is a regular expression searched in the request path (``/bucket/key?query``); ``every``
    fires on every n-th matching request; ``times`` bounds how often it fires in total (None: always).
    """

    kind: str
    path: str = ""
    method: str | None = None
    status: int = 503
    seconds: float = 0.0
    every: int = 1
    times: int | None = 1
    matched: int = 0
    fired: int = 0

    def fires(self, method: str, path: str) -> bool:
        if (self.method and method != self.method) or not re.search(self.path, path):
            return False
        self.matched += 1
        if (self.times is not None and self.fired >= self.times) or self.matched % self.every:
            return False
        self.fired += 1
        return True


@dataclass
class Request:
    at: float
    method: str
    path: str
    action: str  # "forwarded", "error 503", "delay 2.0", "drop"


@dataclass
class FaultProxy:
    upstream: str
    faults: list[Fault] = field(default_factory=list)
    log: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        up = urlsplit(self.upstream)
        self._up_host, self._up_port = up.hostname or "127.0.0.1", up.port or 80
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                proxy._serve(self)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def set_faults(self, *faults: Fault) -> None:
        with self._lock:
            self.faults = list(faults)
            self.log.clear()

    def requests(self, path: str = "", action: str = "") -> list[Request]:
        with self._lock:
            return [r for r in self.log if re.search(path, r.path) and r.action.startswith(action)]

    def _decide(self, method: str, path: str) -> Fault | None:
        with self._lock:
            fault = next((f for f in self.faults if f.fires(method, path)), None)
            action = "forwarded" if fault is None else (
                f"error {fault.status}" if fault.kind == "error" else
                f"delay {fault.seconds}" if fault.kind == "delay" else "drop")
            self.log.append(Request(time.monotonic(), method, path, action))
            return fault

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        body = self._read_body(h)
        fault = self._decide(h.command, h.path)
        if fault is not None and fault.kind == "drop":
            h.close_connection = True
            h.connection.close()
            return
        if fault is not None and fault.kind == "error":
            code = S3_ERRORS.get(fault.status, "InternalError")
            payload = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                       f"<Message>injected by the test proxy</Message><RequestId>proxy</RequestId></Error>").encode()
            h.send_response(fault.status)
            h.send_header("Content-Type", "application/xml")
            h.send_header("Content-Length", str(len(payload)))
            h.end_headers()
            if h.command != "HEAD":
                h.wfile.write(payload)
            return
        if fault is not None and fault.kind == "delay":
            time.sleep(fault.seconds)
        conn = http.client.HTTPConnection(self._up_host, self._up_port, timeout=60)
        try:
            headers = {k: v for k, v in h.headers.items() if k.lower() not in HOP_BY_HOP}
            if body or h.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            conn.request(h.command, h.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            h.send_response(resp.status, resp.reason)
            for k, v in resp.getheaders():
                if k.lower() not in HOP_BY_HOP:
                    h.send_header(k, v)
            h.send_header("Content-Length", resp.getheader("Content-Length") if h.command == "HEAD"
                          and resp.getheader("Content-Length") else str(len(data)))
            h.end_headers()
            if h.command != "HEAD":
                h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (its own timeout): fine
            h.close_connection = True
        finally:
            conn.close()

    @staticmethod
    def _read_body(h: BaseHTTPRequestHandler) -> bytes:
        if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(h.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(h.rfile.read(size))
                h.rfile.readline()
        n = int(h.headers.get("Content-Length") or 0)
        return h.rfile.read(n) if n else b""
