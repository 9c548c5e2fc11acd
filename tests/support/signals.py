"""A stand-in for the signal handlers a test replaces (the ``previous`` fixture)."""

from __future__ import annotations

from types import FrameType


class Previous:
    """A handler standing for what was installed before (``asyncio.run``'s, a host's): it
    records the signals that reach it instead of ending the test run."""

    def __init__(self) -> None:
        self.received: list[int] = []

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
