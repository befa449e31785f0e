"""A real `stylestream serve` server on 127.0.0.1 for the tests (its own event loop task, stopped on exit)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Any

from realtime.server.app import LiveServer, ServeConfig, run_server


@contextlib.asynccontextmanager
async def serving(make_processor: Any, make_tracker: Any, edit_specs: Iterable[Any] = (),
                  **config: Any) -> AsyncIterator[tuple[LiveServer, str]]:
    """(the server, its base URL) while the block runs; ``config``: ServeConfig fields (port 0: any free port)."""
    server = LiveServer(ServeConfig(port=0, **config), make_processor, make_tracker, info={"bundle": "tiny"},
                        edit_specs=edit_specs)
    stop = asyncio.Event()
    url: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(run_server(server, ready=url.set_result, stop=stop))
    try:
        yield server, (await asyncio.wait_for(url, 10)).rstrip("/")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
