"""A real uvicorn server for an ASGI app, on 127.0.0.1 and a free port, in the caller's loop.

For behaviour only a real server shows (clients that disconnect, many connections at once);
`TestClient` runs the app without sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
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
