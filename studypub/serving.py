"""Running the app: uvicorn and an embedded relay, in one event loop.

``studypub serve`` and ``studypub demo`` use :func:`serve_until_stopped` (Ctrl-C or SIGTERM
shut down gracefully and exit 0). Tests and benchmarks use :func:`running` to start a real
server on a free loopback port inside their own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
from collections.abc import AsyncIterator, Callable, Generator
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from studypub.relay import Relay

# Open streams and long-polls are told to finish at once (FeedWakeup.close_waiters); any
# other request in flight gets this long, then is cut.
GRACEFUL_SHUTDOWN_S = 3.0
STARTUP_TIMEOUT_S = 10.0


class _Server(uvicorn.Server):
    """uvicorn without re-raising the signal after a graceful shutdown (uvicorn does, to
    mimic the default handler; for us Ctrl-C is the normal way to stop, not an error)."""

    def __init__(
        self, config: uvicorn.Config, *, handle_signals: bool, on_exit: Callable[[], None]
    ) -> None:
        super().__init__(config)
        self._handle_signals = handle_signals
        self._on_exit = on_exit
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Called from a signal handler: hand the wake-up to the loop, do not run it here.
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._on_exit)
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if not self._handle_signals or threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def _config(app: FastAPI, host: str, port: int, **kwargs: Any) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=int(GRACEFUL_SHUTDOWN_S),
        **kwargs,
    )


async def serve_until_stopped(app: FastAPI, *, host: str, port: int, relay: Relay | None) -> None:
    """Serve ``app`` (and run ``relay`` beside it) until Ctrl-C or SIGTERM.

    Shutdown order: the server stops taking requests and drains (cutting open streams after
    :data:`GRACEFUL_SHUTDOWN_S`), then the relay finishes its batch in flight and stops.
    """
    server = _Server(_config(app, host, port), handle_signals=True, on_exit=_closer(app))
    relay_task = _start_relay(relay)
    try:
        await server.serve()
    finally:
        await _stop_relay(relay, relay_task)


@contextlib.asynccontextmanager
async def running(
    app: FastAPI, *, host: str = "127.0.0.1", port: int = 0, relay: Relay | None = None
) -> AsyncIterator[str]:
    """A real server (and relay) for the duration of the block; yields its base URL.

    ``port=0`` picks a free port. Signals are left alone: the caller owns the process.
    """
    server = _Server(_config(app, host, port), handle_signals=False, on_exit=_closer(app))
    task = asyncio.create_task(server.serve(), name="studypub-http")
    relay_task = _start_relay(relay)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STARTUP_TIMEOUT_S
        while not server.started:
            if task.done():
                task.result()  # raises the startup error
                raise RuntimeError("the HTTP server stopped during startup")
            if loop.time() > deadline:
                raise TimeoutError(f"the HTTP server did not start in {STARTUP_TIMEOUT_S} s")
            await asyncio.sleep(0.01)
        bound = server.servers[0].sockets[0].getsockname()
        yield f"http://{host}:{bound[1]}"
    finally:
        _closer(app)()
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await _stop_relay(relay, relay_task)


def _closer(app: FastAPI) -> Callable[[], None]:
    """What answers the open long-polls and ends the streams when the server stops."""
    close: Callable[[], None] = app.state.wakeup.close_waiters
    return close


def _start_relay(relay: Relay | None) -> asyncio.Task[None] | None:
    if relay is None:
        return None
    return asyncio.create_task(relay.run(), name="studypub-relay")


async def _stop_relay(relay: Relay | None, task: asyncio.Task[None] | None) -> None:
    if relay is None or task is None:
        return
    relay.stop()  # the batch in flight commits or rolls back whole, then run() returns
    await task
