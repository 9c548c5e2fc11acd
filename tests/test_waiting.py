"""``studypub.waiting.wait_any``: the first of events, futures and a timeout."""

from __future__ import annotations

import asyncio

import pytest

from studypub.waiting import wait_any

pytestmark = pytest.mark.timeout(30)


def _tasks() -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


async def test_returns_when_an_event_is_set() -> None:
    wake, stop = asyncio.Event(), asyncio.Event()
    before = _tasks()
    asyncio.get_running_loop().call_later(0.05, stop.set)
    started = asyncio.get_running_loop().time()
    assert await wait_any(wake, stop, timeout_s=10) is True
    assert asyncio.get_running_loop().time() - started < 5
    await asyncio.sleep(0)  # let the cancelled waits finish
    assert _tasks() == before  # no waiter left behind

    stop.clear()
    wake.set()  # already set: at once
    assert await wait_any(wake, stop, timeout_s=10) is True


async def test_returns_false_when_the_time_is_up() -> None:
    before = _tasks()
    assert await wait_any(asyncio.Event(), timeout_s=0.05) is False
    await asyncio.sleep(0)
    assert _tasks() == before


async def test_a_future_that_loses_the_race_is_left_to_its_owner() -> None:
    """The replica's request against its stop event: the loser is the caller's to cancel."""
    stop = asyncio.Event()
    request = asyncio.ensure_future(asyncio.sleep(10, result="answer"))
    stop.set()
    assert await wait_any(request, stop) is True
    assert not request.done()  # not cancelled by wait_any
    request.cancel()

    answered = asyncio.ensure_future(asyncio.sleep(0, result="answer"))
    assert await wait_any(answered, asyncio.Event()) is True
    assert answered.result() == "answer"
