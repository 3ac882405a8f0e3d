"""Execution slots: how many guest calls may use a CPU at once.

Guest threads outnumber slots so that a call blocked in a host function
(a nested ``call``, a KV read) does not stall the pool: a thread gives its
slot back while it waits on the bus and takes one again before the guest
resumes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_held = threading.local()


class CpuSlots:
    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._sem = threading.BoundedSemaphore(slots)

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Hold a slot for the duration of a guest call (blocking until one is free)."""
        self._sem.acquire()
        _held.slots = self
        try:
            yield
        finally:
            _held.slots = None
            self._sem.release()


@contextmanager
def released() -> Iterator[None]:
    """Give this thread's slot back while it waits on something other than the CPU."""
    slots: CpuSlots | None = getattr(_held, "slots", None)
    if slots is None:
        yield
        return
    slots._sem.release()
    try:
        yield
    finally:
        slots._sem.acquire()
