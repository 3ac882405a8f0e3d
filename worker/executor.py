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

from schemas.messages import MAX_CALL_DEPTH

from . import metrics
from .host import CallMeta
from .pool import InstancePool, Outcome
from .slots import CpuSlots

T = TypeVar("T")


class Executor:
    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.busy = 0
        self.cpu = CpuSlots(slots)
        # extra threads for calls waiting in host functions (nested calls, KV), which give
        # their CPU slot back while they wait
        self._threads = ThreadPoolExecutor(
            max_workers=slots * (MAX_CALL_DEPTH + 1), thread_name_prefix="guest"
        )
        metrics.SLOTS_TOTAL.set(slots)

    def _run(self, pool: InstancePool, fn: str, data: bytes, meta: CallMeta) -> Outcome:
        with self.cpu.hold():
            self.busy += 1  # approximate across threads; only used for reporting
            metrics.SLOTS_BUSY.inc()
            try:
                return pool.run(fn, data, meta)
            finally:
                self.busy -= 1
                metrics.SLOTS_BUSY.dec()

    async def run(self, pool: InstancePool, fn: str, data: bytes, meta: CallMeta) -> Outcome:
        """Run one call on a slot."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, self._run, pool, fn, data, meta)

    async def blocking(self, func: Callable[..., T], *args: object) -> T:
        """Run other blocking work (warm-up, shutdown hooks) on a slot."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, func, *args)

    def shutdown(self) -> None:
        self._threads.shutdown(wait=True, cancel_futures=True)


def monotonic_deadline(timeout_s: float) -> float:
    return time.monotonic() + timeout_s
