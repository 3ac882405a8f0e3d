"""Warm instances of one plugin version, checked out by one thread at a time.

An instance that trapped or broke a limit is closed, never returned. The
async side bounds how many calls run at once (the pool size), so at most
that many instances ever exist.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

from schemas.errors import ForgeError, InternalError, Timeout

from .host import CallMeta
from .runtime import GuestInstance, Invocation, PluginRuntime

log = logging.getLogger("forge.worker.pool")


@dataclass(slots=True)
class Outcome:
    """The result of one call as seen from the thread that ran it."""

    invocation: Invocation | None = None
    error: ForgeError | None = None
    logs: list[tuple[int, str]] = field(default_factory=list)
    created_instance: bool = False
    discarded: bool = False
    """The instance broke (trap or limit) and was thrown away."""
    inline: bool = False
    """It ran on the event loop thread (see worker/inline.py)."""


class InstancePool:
    def __init__(self, runtime: PluginRuntime, max_size: int) -> None:
        self.runtime = runtime
        self.max_size = max_size
        self._idle: deque[GuestInstance] = deque()
        self.created = 0
        self.discarded = 0

    @property
    def idle(self) -> int:
        return len(self._idle)

    def warm(self, count: int) -> list[tuple[int, str]]:
        """Create ``count`` idle instances (runs ``init``); raises the first failure."""
        logs: list[tuple[int, str]] = []
        for _ in range(min(count, self.max_size) - len(self._idle)):
            inst = self.runtime.new_instance()
            self.created += 1
            logs.extend(inst.logs)
            self._idle.append(inst)
        return logs

    def run(self, fn: str, data: bytes, meta: CallMeta) -> Outcome:
        """Check out an instance, call ``fn``, and return or discard the instance.

        Blocking: runs on an executor thread.
        """
        if meta.deadline - time.monotonic() <= 0:
            return Outcome(error=Timeout("deadline passed while the call was queued"))
        out = Outcome()
        try:
            inst = self._idle.pop()
        except IndexError:
            try:
                inst = self.runtime.new_instance()
            except ForgeError as e:
                return Outcome(error=e)
            except Exception as e:  # an engine failure must not kill the worker
                log.exception("event=instantiate_failed")
                return Outcome(error=InternalError(f"instantiation failed: {e}"))
            self.created += 1
            out.created_instance = True
        try:
            out.invocation = inst.call(fn, data, meta)
        except ForgeError as e:
            out.error = e
        except Exception as e:
            log.exception("event=call_failed fn=%s", fn)
            inst.broken = True
            out.error = InternalError(f"{type(e).__name__}: {e}")
        out.logs = inst.logs
        if inst.broken or len(self._idle) >= self.max_size:
            self.discarded += 1
            out.discarded = inst.broken
            inst.close(graceful=False)
        else:
            self._idle.append(inst)
        return out

    def close(self) -> list[tuple[int, str]]:
        """Close every idle instance, running each guest's shutdown hook; returns the
        lines those hooks logged."""
        logs: list[tuple[int, str]] = []
        while self._idle:
            inst = self._idle.pop()
            inst.logs = []
            try:
                inst.close(graceful=True)
            except Exception:
                log.exception("event=shutdown_failed")
            logs.extend(inst.logs)
        return logs
