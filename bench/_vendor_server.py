"""A vendor provisioning API that answers every POST after a fixed delay, for the benchmarks.

    python bench/_vendor_server.py --delay 0.1

The ``provision_http`` handler posts each order here, so a handler step waits ``--delay``
seconds on a real socket, as it would on a slow vendor API. asyncio keeps hundreds of
waiting requests cheap: the server must not be what limits the workers. Prints one JSON line
``{"url": ...}`` once it listens and serves until its stdin is closed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

_BODY = json.dumps({"test_url": "https://tests.vendor.example/t/bench"}).encode()
_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(_BODY)).encode()
    + b"\r\n\r\n"
    + _BODY
)


async def _serve_connection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float
) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length:
                await reader.readexactly(length)
            await asyncio.sleep(delay)
            writer.write(_RESPONSE)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    except asyncio.CancelledError:
        # The benchmark is done and asyncio.run cancels the requests still waiting: ended
        # quietly (asyncio's stream callback prints a cancelled handler's traceback).
        pass
    finally:
        writer.close()


async def _main(delay: float) -> None:
    server = await asyncio.start_server(
        lambda r, w: _serve_connection(r, w, delay), "127.0.0.1", 0, backlog=1024
    )
    port = server.sockets[0].getsockname()[1]
    print(json.dumps({"url": f"http://127.0.0.1:{port}/provision"}), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the benchmark closes our stdin
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=0.1, help="seconds before each answer")
    asyncio.run(_main(parser.parse_args().delay))


if __name__ == "__main__":
    main()
