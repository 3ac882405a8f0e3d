"""Which calls run on the event loop: fast, side-effect-free functions, robust to outliers."""

from __future__ import annotations

import pytest

from worker.inline import COOLDOWN_S, FAST_US, InlinePolicy


def test_plugins_with_side_effects_never_run_inline() -> None:
    assert not InlinePolicy(replayable=False).eligible("f")
    assert InlinePolicy(replayable=True).eligible("f")


def test_one_slow_outlier_does_not_move_a_fast_function_to_threads() -> None:
    p = InlinePolicy(replayable=True)
    for _ in range(50):
        p.record("f", 10)
    p.record("f", 50_000)  # a call that was preempted for 50 ms
    assert p.eligible("f")
    p.record("f", 50_000)
    assert p.eligible("f"), "two outliers in a row still leave it below FAST_US"


def test_a_really_slow_function_leaves_the_inline_path_within_a_few_calls() -> None:
    p = InlinePolicy(replayable=True)
    for _ in range(50):
        p.record("f", 10)
    calls = 0
    while p.eligible("f"):
        p.record("f", int(FAST_US * 8))
        calls += 1
        assert calls <= 10
    assert calls >= 3
    assert p.eligible("g"), "other functions are not affected"


def test_an_overrun_keeps_the_function_on_threads_for_the_cooldown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr("worker.inline.time.monotonic", lambda: now[0])
    p = InlinePolicy(replayable=True)
    p.overran("f")
    assert not p.eligible("f")
    now[0] += COOLDOWN_S - 1
    assert not p.eligible("f")
    now[0] += 2
    assert p.eligible("f")
