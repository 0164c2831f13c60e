"""A real HTTP/1.1 server on 127.0.0.1 (random free port) in a daemon thread."""

from __future__ import annotations

import json
import socket
import socketserver
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from ._wire import Incoming, Reply, iter_events

Respond = Callable[[Incoming], Reply]

_CLIENT_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # 50 threads connecting at once must not overflow the backlog

    def __init__(self, respond: Respond, stopping: threading.Event) -> None:
        self.respond = respond
        self.stopping = stopping
        super().__init__(("127.0.0.1", 0), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (getfqdn), which can be slow.
        socketserver.TCPServer.server_bind(self)
        self.server_name = "127.0.0.1"
        self.server_port = int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], _CLIENT_GONE):
            return  # the client went away: nothing worth reporting
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        # small writes (headers, SSE events) must go out at once, not wait for delayed ACKs
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()  # CRLF after the chunk
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _handle(self) -> None:
        body = self._read_body()
        incoming = Incoming(
            method=self.command,
            path=urlsplit(self.path).path,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            query=urlsplit(self.path).query,
        )
        try:
            reply = self.server.respond(incoming)
        except Exception as exc:  # a bug in the fake: answer it instead of hanging the client
            error = {"code": 500, "message": f"fake provider crashed: {type(exc).__name__}"}
            body = json.dumps({"error": error}).encode()
            reply = Reply(500, (("Content-Type", "application/json"),), body)
        if reply.drop:
            self.close_connection = True  # close without writing a byte
            return
        self.send_response(reply.status)
        for name, value in reply.headers:
            self.send_header(name, value)
        if reply.events is None:
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        try:
            for event in iter_events(reply, self.server.stopping):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except _CLIENT_GONE:
            self.close_connection = True


class LoopbackServer:
    """Serve ``respond`` on 127.0.0.1:<random port> until :meth:`close`."""

    def __init__(self, respond: Respond) -> None:
        self._stopping = threading.Event()
        self._server = _Server(respond, self._stopping)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.01},  # stop() returns within ~10 ms,
            name=f"creditguard-fake-provider:{self.port}",
            daemon=True,
        )
        self._thread.start()

    def close(self) -> None:
        self._stopping.set()  # releases streams waiting on a gate
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)
