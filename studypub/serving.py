"""Running the app: uvicorn and an embedded relay, in one event loop.

``studypub serve`` and ``studypub demo`` use :func:`serve_until_stopped` (Ctrl-C or SIGTERM
shut down gracefully and exit 0). Tests and benchmarks use :func:`running` to start a real
server on a free loopback port inside their own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable, Generator

import uvicorn
from fastapi import FastAPI
from uvicorn.config import LOGGING_CONFIG

from studypub.api.stream import CutOffFilter, RawSend
from studypub.relay import Relay
from studypub.signals import on_stop

# Open streams and long-polls are told to finish at once (FeedTail.close_waiters); any
# other request in flight gets this long, then is cut.
GRACEFUL_SHUTDOWN_S = 3.0
STARTUP_TIMEOUT_S = 10.0
BACKLOG = 4096
GC_THRESHOLD = 50_000  # allocations between young collections (Python's default: 700)


class _Server(uvicorn.Server):
    """uvicorn that leaves the process's signals alone and answers the waiters on stop.

    uvicorn would install its own SIGINT/SIGTERM handlers and, after a graceful shutdown,
    raise the signal again to mimic the default handler. For us Ctrl-C is the normal way to
    stop, not an error, and signals belong to the caller: :func:`serve_until_stopped` hands
    them to :meth:`stop` through :func:`studypub.signals.on_stop`; tests and benchmarks
    (:func:`running`) own their process.
    """

    def __init__(self, app: FastAPI, host: str, port: int, *, root_logging: bool = False) -> None:
        super().__init__(
            uvicorn.Config(
                RawSend(app),
                host=host,
                port=port,
                log_level="warning",
                # root_logging: no handlers of uvicorn's own; its records go to the ones the
                # command set up (studypub.cli.common.setup_logging), in the same format.
                log_config=None if root_logging else LOGGING_CONFIG,
                lifespan="on",
                timeout_graceful_shutdown=int(GRACEFUL_SHUTDOWN_S),
                # Thousands of viewers may connect at once (after a deploy, say).
                backlog=BACKLOG,
            )
        )
        tail = getattr(app.state, "tail", None)  # a worker's metrics port has no feed
        self._close_waiters: Callable[[], None] = tail.close_waiters if tail else lambda: None
        server_log = logging.getLogger("uvicorn.error")
        if not any(isinstance(f, CutOffFilter) for f in server_log.filters):
            server_log.addFilter(CutOffFilter())

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def start_serving(self) -> asyncio.Task[None]:
        """Start serving; returns the task, once the server listens (or has failed)."""
        task = asyncio.create_task(self.serve(), name="studypub-http")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STARTUP_TIMEOUT_S
        while not self.started:
            if task.done():
                task.result()  # raises the startup error
                raise RuntimeError("the HTTP server stopped during startup")
            if loop.time() > deadline:
                raise TimeoutError(f"the HTTP server did not start in {STARTUP_TIMEOUT_S} s")
            await asyncio.sleep(0.01)
        return task

    def stop(self) -> None:
        """Stop taking requests and shut down gracefully: open long-polls are answered and
        streams end at once, so clients move on without waiting. Called again (a second
        Ctrl-C), stop waiting for the requests still in flight."""
        self._close_waiters()
        self.force_exit = self.should_exit
        self.should_exit = True


async def serve_until_stopped(
    app: FastAPI,
    *,
    host: str,
    port: int,
    relay: Relay | None,
    on_started: Callable[[], None] | None = None,
    root_logging: bool = False,
) -> None:
    """Serve ``app`` (and run ``relay`` beside it) until Ctrl-C or SIGTERM.

    ``on_started`` runs once the server listens (say "serving on ..." then, not before: a
    client that reads it may connect at once). Shutdown order: the server stops taking
    requests and drains (cutting what is still open after :data:`GRACEFUL_SHUTDOWN_S`),
    then the relay finishes its batch in flight and stops. ``root_logging``: uvicorn logs
    through the root logger's handlers (the command's ``--log-format``), not its own.
    """
    server = _Server(app, host, port, root_logging=root_logging)
    _tune_gc()
    with on_stop(server.stop):
        relay_task = _start_relay(relay)
        try:
            serving = await server.start_serving()
            if on_started is not None:
                on_started()
            await serving
        finally:
            await _stop_relay(relay, relay_task)


def _tune_gc() -> None:
    """Collect garbage less often, and never look again at what start-up created.

    A server holding thousands of streams wakes thousands of coroutines for each entry; with
    the default thresholds those bursts set off full collections that walk every live
    object (every connection, every stream) again and again, for tens of milliseconds
    each. Freezing what exists at start-up and raising the first threshold keeps
    collections rare and short; reference counting frees almost everything anyway.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 50)


@contextlib.asynccontextmanager
async def running(
    app: FastAPI,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    relay: Relay | None = None,
    root_logging: bool = False,
) -> AsyncIterator[str]:
    """A real server (and relay) for the duration of the block; yields its base URL.

    ``port=0`` picks a free port. Signals are left alone: the caller owns the process (or
    hands them to what runs inside the block: a worker's metrics port).
    """
    server = _Server(app, host, port, root_logging=root_logging)
    relay_task = _start_relay(relay)
    task: asyncio.Task[None] | None = None
    try:
        task = await server.start_serving()
        bound = server.servers[0].sockets[0].getsockname()
        yield f"http://{host}:{bound[1]}"
    finally:
        server.stop()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await _stop_relay(relay, relay_task)


def _start_relay(relay: Relay | None) -> asyncio.Task[None] | None:
    if relay is None:
        return None
    return asyncio.create_task(relay.run(), name="studypub-relay")


async def _stop_relay(relay: Relay | None, task: asyncio.Task[None] | None) -> None:
    if relay is None or task is None:
        return
    relay.stop()  # the batch in flight commits or rolls back whole, then run() returns
    await task
