"""Support for the hostile-input tests: secrets planted where Kombo and a vendor's API echo
them, searched for in every output and every Redis value."""

from __future__ import annotations

import base64
import json
import pickle
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

from redis import Redis

from support import free_port

API_KEY = "kombo_KEYleaks4d1e9f2a7c"
API_TOKEN = "apitok_TOKENleaks_0123456789abcdef"
SMTP_PASSWORD = "pw_SMTPleaks%2F3d9e1b"  # percent-encoded in SMTP_URL; sent decoded
PROVISION_TOKEN = "prov_TOKENleaks7c41aa"
WEBHOOK_SECRET = "whsec_HOOKleaks99ab12cd"
SECRETS = {
    "KOMBO_API_KEY": API_KEY,
    "DISPATCHER_API_TOKEN": API_TOKEN,
    "SMTP password": unquote(SMTP_PASSWORD),
    "PROVISION_TOKEN": PROVISION_TOKEN,
    "KOMBO_WEBHOOK_SECRET": WEBHOOK_SECRET,
}
# A line Kombo's message tries to forge on `poll --once`'s stderr.
FORGED = "dispatcher: error: integration greenhouse:Other: FORGED"


def echo_secrets(kind: str, headers: dict[str, str], cut: int) -> str:
    """A server's error message echoing ``headers`` and every planted secret, as ``kind``.

    ``long``: ``cut - 12`` characters of padding first, so that a message cut to ``cut``
    characters before masking keeps the first characters of the first secret.
    """
    planted = {**headers, **{f"X-Planted-{name}": value for name, value in SECRETS.items()}}
    if kind == "repr":
        return f"bad request; headers were {planted!r}"
    if kind == "json":
        return json.dumps({"error": "unauthorized", "request": {"headers": planted}})
    # The token the request carried first: the secret a server echoes most likely.
    sent = headers.get("Authorization", "").removeprefix("Bearer ")
    secrets = " ".join(dict.fromkeys([sent, *SECRETS.values()]))
    if kind == "long":
        return "x" * (cut - 12) + secrets
    return f"REJECTED: {secrets}".upper()


@contextmanager
def json_server(handle: Any) -> Iterator[str]:
    """An HTTP server on a real socket answering every request with ``handle(request)``:
    (status, JSON body)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            body = self.rfile.read(length) if length else b""
            status, answer = handle(self, body)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = _answer

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def echoing_kombo(request: BaseHTTPRequestHandler, body: bytes) -> tuple[int, Any]:
    """Kombo, answering every listing with an error echoing the request (kind by integration)."""
    integration = request.headers.get("X-Integration-Id", "")
    kind = integration.rpartition(":")[2].lower()
    # Kombo's error message is put after "integration X: CODE: " in the sweep record.
    message = echo_secrets(kind, dict(request.headers.items()), 500)
    if kind != "long":  # (long: the padding must come first)
        message = f"refused\n{FORGED}\n{message}"
    error = {"code": "PLATFORM.INPUT_INVALID", "title": "bad", "message": message}
    return 400, {"status": "error", "error": error}


def exposed(text: str) -> list[str]:
    """The planted secrets whose value, or first ten characters, ``text`` holds (any case)."""
    folded = text.lower()
    return [name for name, value in SECRETS.items() if value[:10].lower() in folded]


def _decoded(value: bytes) -> Iterator[bytes]:
    """``value`` and what RQ may have packed in it: zlib (job data, exc_info), base64 of
    zlib (exc_string in rq:results), pickle (job meta)."""
    yield value
    unpackers = (
        zlib.decompress,
        lambda v: zlib.decompress(base64.b64decode(v)),
        lambda v: repr(pickle.loads(v)).encode(),  # our own test Redis: safe to unpickle
    )
    for unpack in unpackers:
        try:
            unpacked = unpack(value)
        except Exception:  # not packed that way: the raw value was searched
            continue
        yield unpacked


def redis_values(redis: Redis) -> Iterator[bytes]:
    """Every key and value in Redis, by type, unpacked where RQ packs it."""
    for key in redis.scan_iter(count=1000):
        yield key
        kind = redis.type(key)
        values: list[bytes] = []
        if kind == b"string":
            values = [redis.get(key) or b""]
        elif kind == b"hash":
            values = [v for kv in redis.hgetall(key).items() for v in kv]
        elif kind == b"list":
            values = redis.lrange(key, 0, -1)
        elif kind == b"set":
            values = list(redis.smembers(key))
        elif kind == b"zset":
            values = [m for m, _ in redis.zrange(key, 0, -1, withscores=True)]
        elif kind == b"stream":
            values = [v for _, fields in redis.xrange(key) for kv in fields.items() for v in kv]
        for value in values:
            yield from _decoded(value)
