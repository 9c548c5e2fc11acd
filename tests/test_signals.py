"""``studypub.signals.on_stop``: SIGINT and SIGTERM become a call on the event loop, and the
handlers that were there before come back. (The commands' own stops are tested as processes:
``worker`` in cli/test_worker.py, ``demo`` and ``replicate`` in cli/test_serve.py, all of them
in tests/faults.)"""

from __future__ import annotations

import asyncio
import os
import signal
import threading

import pytest

from studypub.signals import STOP_SIGNALS, on_stop
from tests.support.signals import Previous

pytestmark = pytest.mark.timeout(30)


async def _calls_on_the_loop(signum: int) -> list[asyncio.AbstractEventLoop]:
    """Send ``signum`` to this process inside ``on_stop``; the loops the callback ran on."""
    loops: list[asyncio.AbstractEventLoop] = []
    called = asyncio.Event()

    def stop() -> None:
        loops.append(asyncio.get_running_loop())  # raises outside the loop's thread
        called.set()

    with on_stop(stop):
        os.kill(os.getpid(), signum)
        await asyncio.wait_for(called.wait(), 5)
    return loops


@pytest.mark.parametrize("signum", STOP_SIGNALS, ids=lambda s: signal.Signals(s).name)
async def test_a_stop_signal_calls_back_on_the_loop_then_the_old_handler_is_back(
    previous: Previous, signum: int
) -> None:
    assert await _calls_on_the_loop(signum) == [asyncio.get_running_loop()]
    assert previous.received == []  # the signal did not reach the old handler
    for stop_signal in STOP_SIGNALS:
        assert signal.getsignal(stop_signal) is previous
    os.kill(os.getpid(), signum)  # after the block: the old handler's again
    assert previous.received == [signum]


async def test_every_signal_calls_again(previous: Previous) -> None:
    """A second Ctrl-C reaches the callback too (the server then stops waiting)."""
    calls: list[int] = []
    twice = asyncio.Event()

    def stop() -> None:
        calls.append(1)
        if len(calls) == 2:
            twice.set()

    with on_stop(stop):
        os.kill(os.getpid(), signal.SIGINT)
        await asyncio.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(twice.wait(), 5)
    assert previous.received == []


async def test_a_loop_without_signal_support_gets_plain_handlers(
    previous: Previous, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the loop cannot handle signals (Windows), plain handlers hand the call to it."""
    loop = asyncio.get_running_loop()

    def unsupported(*args: object) -> None:
        raise NotImplementedError

    monkeypatch.setattr(loop, "add_signal_handler", unsupported)
    monkeypatch.setattr(loop, "remove_signal_handler", unsupported)
    assert await _calls_on_the_loop(signal.SIGTERM) == [loop]
    assert signal.getsignal(signal.SIGTERM) is previous


def test_outside_the_main_thread_it_installs_nothing(previous: Previous) -> None:
    ran: list[bool] = []

    async def work() -> None:
        with on_stop(lambda: None):
            ran.append(all(signal.getsignal(s) is previous for s in STOP_SIGNALS))

    thread = threading.Thread(target=asyncio.run, args=(work(),))
    thread.start()
    thread.join(10)
    assert ran == [True]
