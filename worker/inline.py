"""Which calls run on the event loop thread instead of being handed to an execution thread.

Handing a call to a thread costs far more than a short guest call itself
(tens of microseconds of CPU per hop, plus GIL hand-offs under load), so a
function whose recent calls were short runs inline. Inline calls get a small
epoch budget; a call that overruns it is cut off and run again on a thread
with its full deadline, and the function is kept off the inline path for a
while. Re-running is only safe for plugins without side effects, so only
those (no emit, kv_put, call or WASI) are ever run inline.
"""

from __future__ import annotations

import time

#: Longest an inline call may hold the event loop before it is moved to a thread.
INLINE_BUDGET_S = 0.05
#: Functions whose average call is shorter than this (microseconds) run inline.
FAST_US = 250.0
#: How long a function that overran its budget stays on threads.
COOLDOWN_S = 30.0
_ALPHA = 0.1
#: Longest duration one call adds to the average (microseconds). Call times are wall
#: clock, so a call that was preempted or met a GC pause looks long; clamped, a single
#: outlier moves the average by at most _ALPHA * CLAMP_US and cannot push a fast
#: function off the inline path, while a function that is really slow still crosses
#: FAST_US within a few calls.
CLAMP_US = 4 * FAST_US


class InlinePolicy:
    def __init__(self, replayable: bool) -> None:
        self.replayable = replayable
        self._avg_us: dict[str, float] = {}
        self._slow_until: dict[str, float] = {}

    def eligible(self, fn: str) -> bool:
        if not self.replayable:
            return False
        if self._avg_us.get(fn, 0.0) > FAST_US:
            return False
        until = self._slow_until.get(fn)
        return until is None or time.monotonic() >= until

    def record(self, fn: str, duration_us: int) -> None:
        us = min(float(duration_us), CLAMP_US)
        avg = self._avg_us.get(fn)
        self._avg_us[fn] = us if avg is None else avg + _ALPHA * (us - avg)

    def overran(self, fn: str) -> None:
        self._slow_until[fn] = time.monotonic() + COOLDOWN_S
        self._avg_us.pop(fn, None)
