"""A real uvicorn server for an ASGI app, on 127.0.0.1 and a free port, in the caller's loop.

For behaviour only a real server shows (clients that disconnect, many connections at once);
`TestClient` runs the app without sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import uvicorn


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a server started after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def live_server(app: Any, ready_path: str = "/ready", timeout_s: float = 60.0
                      ) -> AsyncIterator[str]:
    """Serve `app` until the block ends; yields its base URL once `ready_path` answers 200."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, log_level="warning",
                            lifespan="on", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        deadline = time.monotonic() + timeout_s
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("uvicorn stopped before it started")
            if time.monotonic() > deadline:
                raise TimeoutError("uvicorn did not start")
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=url, timeout=5) as client:
            while (await client.get(ready_path)).status_code != 200:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{ready_path} did not answer 200")
                await asyncio.sleep(0.02)
        yield url
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=30)


@contextlib.contextmanager
def live_server_thread(app: Any, ready_path: str = "/ready", timeout_s: float = 120.0
                       ) -> Iterator[str]:
    """`live_server` on a thread of its own, for blocking clients (a browser driver): yields
    the base URL once `ready_path` answers 200, stops the server when the block ends."""
    started: queue.Queue[str | BaseException] = queue.Queue()
    stop = threading.Event()

    async def main() -> None:
        try:
            async with live_server(app, ready_path, timeout_s) as url:
                started.put(url)
                while not stop.is_set():
                    await asyncio.sleep(0.05)
        except BaseException as exc:
            started.put(exc)
            raise

    thread = threading.Thread(target=asyncio.run, args=(main(),), name="live-server",
                              daemon=True)
    thread.start()
    try:
        url = started.get(timeout=timeout_s + 30)
        if isinstance(url, BaseException):
            raise RuntimeError("the live server did not start") from url
        yield url
    finally:
        stop.set()
        thread.join(timeout=60)
