"""Execution slots: the threads guest code runs on, and the hand-off from the event loop.

wasmtime releases the GIL while guest code runs, so each slot is a real
thread and CPU-bound plugins use every core.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from . import metrics
from .pool import InstancePool, Outcome

T = TypeVar("T")


class Executor:
    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.busy = 0
        self._threads = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="guest")
        metrics.SLOTS_TOTAL.set(slots)

    def _run(self, pool: InstancePool, fn: str, data: bytes, deadline: float) -> Outcome:
        self.busy += 1  # approximate across threads; only used for reporting
        metrics.SLOTS_BUSY.inc()
        try:
            return pool.run(fn, data, deadline)
        finally:
            self.busy -= 1
            metrics.SLOTS_BUSY.dec()

    async def run(self, pool: InstancePool, fn: str, data: bytes, deadline: float) -> Outcome:
        """Run one call on a slot; ``deadline`` is a ``time.monotonic()`` value."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, self._run, pool, fn, data, deadline)

    async def blocking(self, func: Callable[..., T], *args: object) -> T:
        """Run other blocking work (warm-up, shutdown hooks) on a slot."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, func, *args)

    def shutdown(self) -> None:
        self._threads.shutdown(wait=True, cancel_futures=True)


def monotonic_deadline(timeout_s: float) -> float:
    return time.monotonic() + timeout_s
