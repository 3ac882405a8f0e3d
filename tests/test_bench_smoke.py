"""bench/perf.py runs end to end with tiny counts and writes the JSON it promises.

No timing is asserted here: the numbers only have to exist and be positive.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.cluster import REPO


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not math.isnan(value) and value > 0


def test_perf_quick_writes_samples_medians_and_ratios(tmp_path: Path) -> None:
    out = tmp_path / "perf.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "perf.py"),
            "--quick",
            "--only",
            "guest",
            "echo",
            "fast",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    report = json.loads(out.read_text())

    machine = report["machine"]
    assert machine["cpu_count"] >= 1
    for key in ("python", "wasmtime", "nats_server", "nats-py"):
        assert machine[key], key
    assert report["config"]["quick"] is True

    guest = report["sections"]["guest"]
    for name in ("forge_call", "abi_floor_c", "c_add", "raw_nop", "raw_add", "func_call_nop"):
        assert _positive(guest["median_us"][name]), name
        assert len(guest["samples_us"][name]) == report["config"]["guest_repeats"]
    assert isinstance(guest["abi_call_overhead_us"], float)
    assert isinstance(guest["export_call_overhead_us"], float)

    transport = report["sections"]["transport"]
    assert set(transport) == {"echo", "fast", "fast-raw"}
    for target, points in transport.items():
        assert set(points) == {f"w{w}_p{p}" for w in (1, 64, 256) for p in (100, 10_000)}
        for key, point in points.items():
            med = point["median"]
            assert med["errors"] == 0, (target, key)
            for field in ("rate", "p50_us", "p99_us"):
                assert _positive(med[field]), (target, key, field)
            (sample,) = point["samples"]  # --quick: one repetition
            assert sample["calls"] > 0

    names = {t["name"] for t in report["targets"]}
    assert "fast/echo throughput, window 64, 100 B" in names
    assert "forge/1 call: ForgeV1Instance.call - same C calls" in names
    assert "guest export call: RawFunc add - C call" in names
    for t in report["targets"]:
        assert isinstance(t["ok"], bool) and _positive(abs(t["value"])), t

    # The printed table carries the same ratios, each marked.
    assert "targets" in proc.stdout
    assert "PASS" in proc.stdout or "MISS" in proc.stdout
