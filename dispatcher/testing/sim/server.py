"""The simulator over a real socket: an HTTP/1.1 server (keep-alive) in front of
:meth:`Simulator.handle <dispatcher.testing.sim.api.Simulator.handle>`."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Protocol

import httpx

__all__ = ["SimulatorServer", "run_server"]


class Simulator(Protocol):
    """What the server needs of :class:`dispatcher.testing.sim.api.Simulator` (which imports
    this module: a Protocol keeps the arrow one way)."""

    def handle(self, request: httpx.Request) -> httpx.Response: ...


_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length"})


class _RequestHandler(BaseHTTPRequestHandler):
    """Converts between http.server and httpx so that the socket path runs the same handle()."""

    protocol_version = "HTTP/1.1"  # keep-alive: benchmark clients reuse connections
    # Headers and body leave in separate writes; with Nagle on, the body of every second
    # answer on a kept-alive connection waits ~40 ms for the client's delayed ACK.
    disable_nagle_algorithm = True
    server: _HTTPServer

    def do_GET(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: one stderr line per request would swamp benchmarks."""

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # the CRLF closing each chunk
            while self.rfile.readline().strip():  # optional trailers, then the final CRLF
                pass
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self) -> None:
        try:
            body = self._read_body()
            headers = [(k, v) for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP]
            request = httpx.Request(
                self.command, "http://kombo.sim" + self.path, headers=headers, content=body
            )
        except (ValueError, httpx.InvalidURL):
            self.send_error(400, "Bad request")
            return
        try:
            response = self.server.simulator.handle(request)
        except httpx.TransportError:
            # A drop_answer fault: the write happened, the client never hears of it.
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        data = response.content
        self.send_response(response.status_code)
        for key, value in response.headers.multi_items():
            if key.lower() not in _HOP_BY_HOP:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # a client holding a keep-alive connection must not block exit
    request_queue_size = 1024  # benchmarks open hundreds of connections at once

    def __init__(self, address: tuple[str, int], simulator: Simulator) -> None:
        self.simulator = simulator
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _RequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that can stall
        # for seconds on machines without DNS; the name is not needed here.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Cut idle keep-alive connections: their daemon threads would otherwise serve on."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the client
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up mid-answer are normal under load; anything else is reported.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _base_url(host: str, port: int) -> str:
    """The base URL a client on this machine uses for a server bound to ``host:port``."""
    url_host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host, host)
    if ":" in url_host and not url_host.startswith("["):
        url_host = f"[{url_host}]"
    return f"http://{url_host}:{port}/v1"


class SimulatorServer:
    """A running socket server for a :class:`Simulator`; close it or use it as a context."""

    def __init__(self, simulator: Simulator, host: str, port: int) -> None:
        self._httpd = _HTTPServer((host, port), simulator)
        self.host = host
        self.port: int = int(self._httpd.server_address[1])
        self.url = _base_url(host, self.port)
        self._closed = False
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},  # close() returns quickly
            name=f"kombo-sim:{self.port}",
            daemon=True,
        )
        self._thread.start()

    def close(self) -> None:
        """Stop accepting, cut open connections and release the port. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._httpd.shutdown()
        self._httpd.close_connections()
        self._httpd.server_close()
        self._thread.join()

    def __enter__(self) -> SimulatorServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def run_server(
    simulator: Simulator, host: str, port: int, ready: Callable[[str], None] | None = None
) -> None:
    """Serve ``simulator`` over HTTP in this thread until KeyboardInterrupt (for the CLI)."""
    server = _HTTPServer((host, port), simulator)
    if ready is not None:
        ready(_base_url(host, int(server.server_address[1])))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close_connections()
        server.server_close()
