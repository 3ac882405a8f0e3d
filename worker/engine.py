"""wasmtime engines behind one small interface, and the epoch ticker that bounds calls.

An engine is fixed by the settings that change compiled code (stack size,
fuel metering); plugins with the same settings share one. A single daemon
thread bumps every engine's epoch each ``tick_ms``: a call whose deadline is
``n`` ticks away traps with an interrupt once that many ticks pass.

wasmer has no build for this Python, so wasmtime is the only engine.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import threading
from dataclasses import dataclass

import wasmtime

from schemas.abi import WASM_FEATURES

WASMTIME_VERSION = importlib.metadata.version("wasmtime")


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """Settings baked into compiled code; part of the compiled-module cache key."""

    max_stack_kb: int = 512
    """Most wasm stack a call may use before it traps with a stack overflow."""
    fuel: bool = False
    """Whether calls are metered in fuel."""

    def cache_key(self) -> str:
        text = f"wasmtime={WASMTIME_VERSION};stack={self.max_stack_kb};fuel={self.fuel};"
        text += "memory_may_move=0;"
        text += ";".join(f"{k}={v}" for k, v in sorted(WASM_FEATURES.items()))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def make_config(settings: EngineSettings | None = None) -> wasmtime.Config:
    """A Config with only the proposals the ABIs need and deadline support on."""
    s = settings or EngineSettings()
    cfg = wasmtime.Config()
    for name, on in WASM_FEATURES.items():
        setattr(cfg, name, on)
    cfg.epoch_interruption = True
    cfg.memory_may_move = False  # a guest memory's base address is fixed (worker/guest.py)
    cfg.consume_fuel = s.fuel
    cfg.max_wasm_stack = s.max_stack_kb * 1024
    cfg.cranelift_opt_level = "speed"
    cfg.parallel_compilation = False
    return cfg


class Engines:
    """One wasmtime Engine per distinct EngineSettings, all driven by one epoch ticker."""

    def __init__(self, tick_ms: int = 5) -> None:
        self.tick_ms = tick_ms
        self._engines: dict[EngineSettings, wasmtime.Engine] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, name="epoch-ticker", daemon=True)
        self._thread.start()

    def get(self, settings: EngineSettings) -> wasmtime.Engine:
        with self._lock:
            engine = self._engines.get(settings)
            if engine is None:
                engine = wasmtime.Engine(make_config(settings))
                self._engines[settings] = engine
            return engine

    def ticks_for(self, timeout_s: float) -> int:
        """Epoch ticks that cover ``timeout_s`` (one extra so a deadline is never early)."""
        return max(1, int(timeout_s * 1000 / self.tick_ms) + 1)

    def _tick(self) -> None:
        interval = self.tick_ms / 1000
        while not self._stop.wait(interval):
            with self._lock:
                engines = list(self._engines.values())
            for engine in engines:
                engine.increment_epoch()

    def close(self) -> None:
        self._stop.set()
