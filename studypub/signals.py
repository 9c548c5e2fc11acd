"""Stop signals: Ctrl-C (SIGINT) and SIGTERM become one call of a stop callback.

Every long-running command (``studypub worker``, ``serve``, ``demo``, ``replicate``) stops
the same way (procrastinate's ``signals.py``): inside :func:`on_stop`, both signals call the
command's own stop (``Relay.stop``, the server's shutdown, the replica's stop event) on the
event loop, and the command winds down in its own time: the batch in flight commits or rolls
back whole, open streams end, stored pages stay. The callback must be idempotent: a second
signal calls it again.

The handlers go through the event loop (``loop.add_signal_handler``), not ``signal.signal``
alone: the loop then wakes at once even when the signal lands on another thread (aiosqlite's,
the default executor's) while the loop sleeps. Leaving the block puts back the handlers that
were there before, e.g. ``asyncio.run``'s own Ctrl-C handler. Outside the main thread signals
cannot be handled: the block runs without handlers, and the caller stops the work itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

log = logging.getLogger("studypub.signals")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def on_stop(callback: Callable[[], None]) -> Iterator[None]:
    """Call ``callback`` on the running event loop at every SIGINT or SIGTERM, inside the
    block; restore the previous handlers when it ends. Needs a running loop."""
    if threading.current_thread() is not threading.main_thread():
        log.debug("not the main thread: no stop signal handlers")
        yield
        return
    loop = asyncio.get_running_loop()
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    try:
        for signum in STOP_SIGNALS:
            _install(loop, signum, callback)
        yield
    finally:
        for signum, handler in previous.items():
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(signum)
            if handler is not None:  # None: installed outside Python, nothing to put back
                signal.signal(signum, handler)


def _install(loop: asyncio.AbstractEventLoop, signum: int, callback: Callable[[], None]) -> None:
    try:
        loop.add_signal_handler(signum, callback)
    except NotImplementedError:  # an event loop without signal support (Windows)

        def handle(signum: int, frame: FrameType | None) -> None:
            # A plain handler runs between two bytecodes of the main thread, maybe inside
            # the loop's own code: hand the callback to the loop, do not run it here.
            loop.call_soon_threadsafe(callback)

        signal.signal(signum, handle)
