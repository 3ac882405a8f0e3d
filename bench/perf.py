"""ForgeOne performance, side by side with the bare-NATS ceilings, in one run.

    python bench/perf.py [--quick] [--json OUT.json] [--only NAME ...]

Sections (``--only`` takes any of these names):

    echo       ceiling A: a bare nats-py echo responder (its own process, uvloop)
    jetstream  ceiling B: a bare JetStream pull -> publish reply (msg id) -> ack loop
    fast       ForgeOne fast path on the "echo" example plugin, one worker process
               (``fast`` = ForgeClient.invoke_result, ``fast-raw`` = nc.request with
               the same bytes the client sends)
    durable    ForgeOne durable path (client.submit + results) on the same plugin
    cpu        a ~20 ms CPU-bound plugin on one worker at --slots 1 and --slots 2
    cold       deploy / worker start -> first result, small and ~1 MB module,
               compiled-module cache miss and hit
    memory     worker RSS idle, and with 100 deployed, warmed echo plugins
    guest      in-process cost of ForgeV1Instance.call vs the raw C-API call floor

Every process (nats-server, coordinator, workers, the ceiling servers) is
started here and stopped before exit. The same client connection (nats-py on
uvloop) drives every transport target with ``window`` requests in flight.
Each measurement is repeated (3 times, once with --quick), interleaved across
targets so that noise hits all of them alike, and the medians are reported.
Internal modes (used by the bench itself): ``--serve-echo URL``,
``--serve-jetstream URL``, ``--instance-rss N``.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import importlib.metadata
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
# Children (workers, coordinator, ceiling servers) run the same tree as this file.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
)

import nats  # noqa: E402
import uvloop  # noqa: E402
import wasmtime  # noqa: E402
from nats.aio.client import Client  # noqa: E402
from nats.aio.msg import Msg  # noqa: E402
from nats.js.api import (  # noqa: E402
    AckPolicy,
    ConsumerConfig,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from coordinator.client import REPLY_GRACE_S, ForgeClient  # noqa: E402
from coordinator.embedded_nats import server_binary  # noqa: E402
from schemas.codec import decode, encode  # noqa: E402
from schemas.errors import NoWorkers, PluginNotFound  # noqa: E402
from schemas.manifest import Manifest  # noqa: E402
from schemas.messages import (  # noqa: E402
    HEADER_MSG_ID,
    HEADER_TIMEOUT_MS,
    InvokeRequest,
    JobRequest,
    JobResult,
)
from schemas.policy import Caps  # noqa: E402
from tests.cluster import PLUGINS, Cluster, Proc, built_plugins, manifest_for  # noqa: E402
from worker.adapters import make_runtime  # noqa: E402
from worker.engine import Engines  # noqa: E402
from worker.guest import RawFunc, c_func_call  # noqa: E402
from worker.host import CallMeta, Grants, HostEnv  # noqa: E402
from worker.runtime import (  # noqa: E402
    CallLimits,
    GuestInstance,
    PluginRuntime,
    WorkerCaps,
    effective_limits,
    engine_settings_for,
)

SECTIONS = ("echo", "jetstream", "fast", "durable", "cpu", "cold", "memory", "guest")
TRANSPORT = ("echo", "jetstream", "fast", "durable")
WINDOWS = (1, 64, 256)
PAYLOADS = (100, 10_000)
CALL_TIMEOUT_S = 10.0

ECHO_SUBJECT = "bench.echo"
BARE_JOBS_STREAM = "BENCH_JOBS"
BARE_REPLIES_STREAM = "BENCH_REPLIES"
BARE_JOBS_SUBJECT = "bench.jobs.echo"
BARE_CONSUMER = "bench-jobs"
#: Jobs the bare JetStream loop keeps in flight, and most it fetches at once.
BARE_CAPACITY = 64
BARE_BATCH = 64

MIB = 1024 * 1024


@dataclass(frozen=True)
class Config:
    quick: bool
    repeats: int
    count: int
    """Calls per transport measurement (the time bound may stop it first)."""
    max_seconds: float
    warmup: int
    cpu_window: int
    cpu_count: int
    cpu_ms: float
    """Target guest time per CPU-bound call."""
    cold_repeats: int
    memory_plugins: int
    guest_calls: int
    guest_repeats: int
    big_module_bytes: int

    @classmethod
    def make(cls, quick: bool) -> Config:
        if quick:
            return cls(True, 1, 300, 2.0, 50, 8, 24, 20.0, 1, 10, 2000, 3, 1024 * 1024)
        return cls(False, 3, 3000, 10.0, 300, 8, 200, 20.0, 3, 100, 20_000, 7, 1024 * 1024)


# --- statistics ------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return math.nan
    k = max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[k]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


@dataclass
class Sample:
    """One measurement: ``calls`` completed in ``seconds`` with ``window`` in flight."""

    calls: int
    errors: int
    seconds: float
    rate: float
    p50_us: float
    p99_us: float
    mean_us: float
    server_cpu_us: float = math.nan
    """CPU time (user + system, all threads) of the serving process per completed call."""
    nats_cpu_us: float = math.nan
    """CPU time of nats-server per completed call."""
    client_cpu_us: float = math.nan
    """CPU time of this (driving) process per completed call."""


def summarize(samples: list[Sample]) -> dict[str, float]:
    return {
        "rate": median([s.rate for s in samples]),
        "p50_us": median([s.p50_us for s in samples]),
        "p99_us": median([s.p99_us for s in samples]),
        "errors": sum(s.errors for s in samples),
        "server_cpu_us": median([s.server_cpu_us for s in samples]),
        "nats_cpu_us": median([s.nats_cpu_us for s in samples]),
        "client_cpu_us": median([s.client_cpu_us for s in samples]),
    }


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process (all its threads) has used so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


async def measure(
    call: Callable[[], Awaitable[None]],
    window: int,
    count: int,
    max_seconds: float,
    server_pid: int,
    nats_pid: int,
) -> Sample:
    """:func:`drive`, plus the CPU each process spent per call (robust to a noisy machine)."""
    pids = (server_pid, nats_pid, os.getpid())
    before = [cpu_seconds(p) for p in pids]
    s = await drive(call, window, count, max_seconds)
    used = [cpu_seconds(p) - b for p, b in zip(pids, before, strict=True)]
    if s.calls:
        s.server_cpu_us, s.nats_cpu_us, s.client_cpu_us = (u / s.calls * 1e6 for u in used)
    return s


async def drive(
    call: Callable[[], Awaitable[None]], window: int, count: int, max_seconds: float
) -> Sample:
    """Keep ``window`` calls in flight until ``count`` are issued or ``max_seconds`` pass."""
    latencies: list[float] = []
    errors = 0
    issued = 0
    clock = time.perf_counter
    stop_at = clock() + max_seconds

    async def lane() -> None:
        nonlocal issued, errors
        while issued < count and clock() < stop_at:
            issued += 1
            t = clock()
            try:
                await call()
            except Exception:
                errors += 1
                continue
            latencies.append(clock() - t)

    started = clock()
    await asyncio.gather(*(lane() for _ in range(window)))
    seconds = clock() - started
    latencies.sort()
    return Sample(
        calls=len(latencies),
        errors=errors,
        seconds=seconds,
        rate=len(latencies) / seconds if seconds > 0 else 0.0,
        p50_us=percentile(latencies, 0.50) * 1e6,
        p99_us=percentile(latencies, 0.99) * 1e6,
        mean_us=(sum(latencies) / len(latencies) * 1e6) if latencies else math.nan,
    )


# --- processes ---------------------------------------------------------------------------


@dataclass
class Child:
    """A helper process started by the bench (a ceiling server or a measurement)."""

    name: str
    popen: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def spawn_child(name: str, args: list[str], log: Path) -> Child:
    """Start ``perf.py <args>`` and wait for its ``ready`` line."""
    with open(log, "ab") as err:
        popen = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), *args],
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
    child = Child(name, popen)
    assert popen.stdout is not None
    line = popen.stdout.readline().decode()
    if not line.startswith("ready"):
        child.stop()
        raise RuntimeError(f"{name} did not start: {line!r}\n{log.read_text(errors='replace')}")
    return child


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def settled_rss(pid: int, samples: int = 5, gap_s: float = 0.3) -> int:
    values = []
    for _ in range(samples):
        time.sleep(gap_s)  # let background tasks (heartbeats, fetch loops) settle
        values.append(rss_bytes(pid))
    return int(statistics.median(values))


# --- ceiling servers (run in their own processes) -----------------------------------------


async def _until_terminated() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve_echo(url: str) -> None:
    """Ceiling A: reply to every request on ECHO_SUBJECT with its own data."""
    nc = await nats.connect(url, name="bench-echo")

    async def on_msg(msg: Msg) -> None:
        await msg.respond(msg.data)

    await nc.subscribe(
        ECHO_SUBJECT,
        queue="bench-echo",
        cb=on_msg,
        pending_msgs_limit=65536,
        pending_bytes_limit=512 * MIB,
    )
    await nc.flush()
    print("ready", flush=True)
    await _until_terminated()
    await nc.drain()


async def ensure_bare_streams(nc: Client) -> None:
    """The bare loop's streams, configured like FORGE_JOBS and FORGE_RESULTS."""
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(
            name=BARE_JOBS_STREAM,
            subjects=["bench.jobs.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            duplicate_window=120.0,
        )
    )
    await js.add_stream(
        StreamConfig(
            name=BARE_REPLIES_STREAM,
            subjects=["bench.replies.*"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=3600.0,
            max_msgs_per_subject=1,
            discard=DiscardPolicy.NEW,
            discard_new_per_subject=True,
            duplicate_window=120.0,
            allow_direct=True,
        )
    )
    await js.add_consumer(
        BARE_JOBS_STREAM,
        ConsumerConfig(
            durable_name=BARE_CONSUMER,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=30.0,
            max_ack_pending=20_000,
            max_waiting=512,
        ),
    )


async def serve_jetstream(url: str) -> None:
    """Ceiling B: pull jobs, publish one reply per job into a stream (msg id), ack."""
    nc = await nats.connect(url, name="bench-jetstream")
    js = nc.jetstream(timeout=5)
    await ensure_bare_streams(nc)
    psub = await js.pull_subscribe_bind(durable=BARE_CONSUMER, stream=BARE_JOBS_STREAM)
    inflight = 0
    freed = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()

    async def handle(msg: Msg) -> None:
        nonlocal inflight
        try:
            job_id = (msg.headers or {})[HEADER_MSG_ID]
            await js.publish(
                f"bench.replies.{job_id}",
                msg.data,
                stream=BARE_REPLIES_STREAM,
                headers={HEADER_MSG_ID: job_id},
            )
            await msg.ack()
        except Exception as e:  # left unacked: redelivered after the ack wait
            print(f"job failed: {e!r}", file=sys.stderr, flush=True)
        finally:
            inflight -= 1
            freed.set()

    async def pull() -> None:
        nonlocal inflight
        while True:
            free = BARE_CAPACITY - inflight
            if free <= 0:
                freed.clear()
                await freed.wait()
                continue
            try:
                msgs = await psub.fetch(batch=min(free, BARE_BATCH), timeout=2.0)
            except TimeoutError:  # nats-py raises its own and plain asyncio timeouts here
                continue
            except Exception as e:  # keep serving; say why in the log
                print(f"fetch failed: {e!r}", file=sys.stderr, flush=True)
                await asyncio.sleep(0.1)  # back off before pulling again
                continue
            for msg in msgs:
                inflight += 1
                task = asyncio.create_task(handle(msg))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

    puller = asyncio.create_task(pull())
    await nc.flush()
    print("ready", flush=True)
    await _until_terminated()
    puller.cancel()
    await nc.close()


# --- wasm modules ----------------------------------------------------------------------


def echo_wasm() -> bytes:
    return built_plugins()["echo"].read_bytes()


def echo_fields() -> dict[str, Any]:
    source = json.loads((PLUGINS / "echo" / "forge.json").read_text())
    return {k: v for k, v in source.items() if k != "name"}


def echo_package(cluster: Cluster, name: str) -> bytes:
    wasm = echo_wasm()
    return cluster.package(manifest_for(name, wasm, **echo_fields()), wasm)


def cpu_wat(iterations: int) -> str:
    """``spin``: ``iterations`` rounds of an LCG (integer work), returns the 4-byte state."""
    return f"""(module
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) i32.const 1024)
  (func (export "spin") (param $p i32) (param $n i32) (result i64)
    (local $i i32) (local $acc i32)
    (local.set $i (i32.const {iterations}))
    (local.set $acc (i32.add (local.get $n) (i32.const 1)))
    (block $done (loop $next
      (br_if $done (i32.eqz (local.get $i)))
      (local.set $acc (i32.add (i32.mul (local.get $acc) (i32.const 1103515245))
                               (i32.const 12345)))
      (local.set $acc (i32.xor (local.get $acc) (i32.shr_u (local.get $acc) (i32.const 7))))
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (br $next)))
    (i32.store (i32.const 16) (local.get $acc))
    (i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const 4))))"""


def chained_wat(head: list[str], run: str, functions: int, ops: int) -> str:
    """A module of ``head`` (imports, memory...), ``functions`` chained arithmetic
    functions of ``ops`` operations each, and ``run`` (the export that calls the chain):
    its size is set by the two numbers (about 5 bytes per operation)."""
    parts = ["(module", *head]
    instrs = ("i32.add", "i32.mul", "i32.xor", "i32.sub")
    for i in range(functions):
        body = ["local.get 0"]
        for k in range(ops):
            body.append(f"i32.const {100_000 + (i * 7919 + k * 104_729) % 900_000}")
            body.append(instrs[(i + k) % len(instrs)])
        if i:
            body.append(f"call $f{i - 1}")  # a chain, so nothing is trivially dead
        parts.append(f"(func $f{i} (param i32) (result i32) {' '.join(body)})")
    parts += [run, ")"]
    return "\n".join(parts)


def grow_wasm(make_wat: Callable[[int, int], str], min_bytes: int, functions: int = 3000) -> bytes:
    """The module ``make_wat(functions, ops)`` with the fewest ops that reach ``min_bytes``."""
    ops = max(1, min_bytes // (functions * 5))
    while True:
        wasm = bytes(wasmtime.wat2wasm(make_wat(functions, ops)))
        if len(wasm) >= min_bytes:
            return wasm
        ops += max(1, (min_bytes - len(wasm)) // (functions * 5) + 1)


def big_wat(functions: int, ops: int) -> str:
    """A valid forge/1 module of ``functions`` arithmetic functions plus an echo handler."""
    return chained_wat(
        [
            '(memory (export "memory") 1)',
            '(func (export "alloc") (param i32) (result i32) i32.const 1024)',
        ],
        '(func (export "run") (param $p i32) (param $n i32) (result i64) '
        "(drop (call $f0 (local.get $n))) "
        "(i64.or (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32)) "
        "(i64.extend_i32_u (local.get $n))))",
        functions,
        ops,
    )


def big_wasm(min_bytes: int) -> bytes:
    """A forge/1 module of at least ``min_bytes``."""
    return grow_wasm(big_wat, min_bytes)


def worker_limits(manifest: Manifest) -> CallLimits:
    """The limits a worker with default caps and an empty policy gives ``manifest``."""
    return effective_limits(manifest, WorkerCaps(), Caps())


def build_runtime(engines: Engines, manifest: Manifest, module: wasmtime.Module) -> PluginRuntime:
    """A plugin runtime built the way worker/loader.py builds one (no bus bridge)."""
    env = HostEnv(manifest.name, manifest.version, Grants(manifest.permissions))
    return make_runtime(engines, manifest, module, worker_limits(manifest), env)


def meta(timeout_s: float) -> CallMeta:
    return CallMeta(deadline=time.monotonic() + timeout_s)


@contextmanager
def local_runtime(wasm: bytes, name: str, exports: list[str]) -> Iterator[PluginRuntime]:
    """A plugin runtime built the way a worker builds one (no NATS, no cache)."""
    engines = Engines()
    try:
        manifest: Manifest = manifest_for(name, wasm, exports=exports)
        engine = engines.get(engine_settings_for(worker_limits(manifest)))
        yield build_runtime(engines, manifest, wasmtime.Module(engine, wasm))
    finally:
        engines.close()


def memory_pages(wasm: bytes) -> int:
    """Initial pages of the module's exported memory."""
    module = wasmtime.Module(wasmtime.Engine(), wasm)
    for export in module.exports:
        if isinstance(export.type, wasmtime.MemoryType):
            return int(export.type.limits.min)
    return 0


def calibrate_cpu(target_ms: float) -> tuple[int, float]:
    """Iterations of ``cpu_wat`` that take about ``target_ms`` here, and the measured ms."""
    iterations = 2_000_000
    for _ in range(3):
        wasm = bytes(wasmtime.wat2wasm(cpu_wat(iterations)))
        with local_runtime(wasm, "cpu", ["spin"]) as runtime:
            inst = runtime.new_instance()
            inst.call("spin", b"", meta(30.0))
            times = []
            for _ in range(5):
                t = time.perf_counter()
                inst.call("spin", b"", meta(30.0))
                times.append(time.perf_counter() - t)
        ms = min(times) * 1000
        if abs(ms - target_ms) / target_ms < 0.1:
            return iterations, ms
        iterations = max(1000, int(iterations * target_ms / ms))
    return iterations, ms


# --- section: guest call overhead (in-process) -------------------------------------------

RAW_WAT = """(module
  (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add)
  (func (export "nop")))"""


def per_call_us(loop: Callable[[int], None], n: int) -> float:
    """CPU time of this thread per call: on a shared machine, time other processes take
    from us would otherwise count as ours."""
    t = time.thread_time_ns()
    loop(n)
    return (time.thread_time_ns() - t) / n / 1000


def section_guest(cfg: Config) -> dict[str, Any]:
    """ForgeV1Instance.call on echo vs RawFunc / Func.__call__ on trivial functions."""
    wasm = echo_wasm()
    data = b"x" * 100
    engines = Engines()  # for the trivial modules: same settings, so the same Config
    with local_runtime(wasm, "echo", echo_fields()["exports"]) as runtime:
        inst = runtime.new_instance()
        engine = engines.get(engine_settings_for(worker_limits(runtime.manifest)))
        store = wasmtime.Store(engine)
        store.set_epoch_deadline(1 << 40)
        raw_inst = wasmtime.Instance(store, wasmtime.Module(engine, RAW_WAT), [])
        ex = raw_inst.exports(store)
        add, nop = ex["add"], ex["nop"]
        assert isinstance(add, wasmtime.Func) and isinstance(nop, wasmtime.Func)
        raw_add = RawFunc(store, add, ("i32", "i32"), ("i32",))
        raw_nop = RawFunc(store, nop, (), ())

        # The forge/1 protocol done by hand with direct C calls: alloc, copy in, handler,
        # copy out, dealloc of the input (the echo's output lies inside it, so it is not
        # handed back separately) -- what ForgeV1Instance.call does, minus its bookkeeping.
        e_store = wasmtime.Store(engine)
        e_store.set_epoch_deadline(1 << 40)
        e_inst = wasmtime.Instance(e_store, wasmtime.Module(engine, wasm), [])
        e_ex = e_inst.exports(e_store)
        e_mem = e_ex["memory"]
        assert isinstance(e_mem, wasmtime.Memory)
        e_ctx = ctypes.cast(e_store._context(), ctypes.c_void_p).value
        trap = ctypes.c_void_p()
        trap_ref = ctypes.byref(trap)
        refs = {}
        for fname in ("alloc", "echo", "dealloc", "add", "nop"):
            f = (e_ex if fname in e_ex else ex)[fname]
            assert isinstance(f, wasmtime.Func)
            refs[fname] = ctypes.addressof(f._func)
        ctx = ctypes.cast(store._context(), ctypes.c_void_p).value
        vals = (wasmtime._bindings.wasmtime_val_raw_t * 2)()
        base = ctypes.addressof(e_mem.data_ptr(e_store).contents)
        c_alloc, c_echo, c_dealloc = refs["alloc"], refs["echo"], refs["dealloc"]

        def loop_forge(n: int) -> None:
            call, m = inst.call, meta(3600.0)
            for _ in range(n):
                call("echo", data, m)

        def loop_abi_floor(n: int) -> None:
            size, call, v = len(data), c_func_call, vals
            for _ in range(n):
                v[0].i32 = size
                call(e_ctx, c_alloc, v, 1, trap_ref)
                p = v[0].i32 & 0xFFFFFFFF
                ctypes.memmove(base + p, data, size)
                v[0].i32, v[1].i32 = p, size
                call(e_ctx, c_echo, v, 2, trap_ref)
                r = v[0].i64
                ctypes.string_at(base + (r >> 32), r & 0xFFFFFFFF)
                v[0].i32, v[1].i32 = p, size
                call(e_ctx, c_dealloc, v, 2, trap_ref)

        def loop_c_nop(n: int) -> None:
            call, f, v = c_func_call, refs["nop"], vals
            for _ in range(n):
                call(ctx, f, v, 1, trap_ref)

        def loop_c_add(n: int) -> None:
            call, f, v = c_func_call, refs["add"], vals
            for _ in range(n):
                v[0].i32, v[1].i32 = 1, 2
                call(ctx, f, v, 2, trap_ref)

        def loop_raw_nop(n: int) -> None:
            f = raw_nop
            for _ in range(n):
                f()

        def loop_raw_add(n: int) -> None:
            f = raw_add
            for _ in range(n):
                f(1, 2)

        def loop_func_nop(n: int) -> None:
            f, s = nop, store
            for _ in range(n):
                f(s)

        def loop_func_add(n: int) -> None:
            f, s = add, store
            for _ in range(n):
                f(s, 1, 2)

        loops = {
            "forge_call": loop_forge,
            "abi_floor_c": loop_abi_floor,
            "c_nop": loop_c_nop,
            "c_add": loop_c_add,
            "raw_nop": loop_raw_nop,
            "raw_add": loop_raw_add,
            "func_call_nop": loop_func_nop,
            "func_call_add": loop_func_add,
        }
        assert inst.call("echo", data, meta(5.0)).output == data
        for loop in loops.values():  # warm up
            loop(max(100, cfg.guest_calls // 20))
        samples: dict[str, list[float]] = {k: [] for k in loops}
        for _ in range(cfg.guest_repeats):  # interleaved, so noise hits all alike
            for name, loop in loops.items():
                samples[name].append(per_call_us(loop, cfg.guest_calls))
    engines.close()  # (a leak on error is only a daemon ticker thread)
    medians = {k: median(v) for k, v in samples.items()}
    return {
        "calls_per_sample": cfg.guest_calls,
        "samples_us": samples,
        "median_us": medians,
        "export_call_overhead_us": medians["raw_add"] - medians["c_add"],
        "abi_call_overhead_us": medians["forge_call"] - medians["abi_floor_c"],
        "c_calls_per_forge_call": 3,
    }


# --- section: transport targets (ceilings, fast path, durable path) ------------------------


class ReplyRouter:
    """One subscription that hands each reply to the future waiting for its id."""

    def __init__(self, key: Callable[[Msg], str]) -> None:
        self._key = key
        self._waiting: dict[str, asyncio.Future[Msg]] = {}

    async def subscribe(self, nc: Client, subject: str) -> None:
        async def on_msg(msg: Msg) -> None:
            fut = self._waiting.pop(self._key(msg), None)
            if fut is not None and not fut.done():
                fut.set_result(msg)

        await nc.subscribe(
            subject, cb=on_msg, pending_msgs_limit=1 << 20, pending_bytes_limit=1 << 30
        )
        await nc.flush()

    def expect(self, key: str) -> asyncio.Future[Msg]:
        fut: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._waiting[key] = fut
        return fut

    def forget(self, key: str) -> None:
        self._waiting.pop(key, None)


Caller = Callable[[int], Callable[[], Awaitable[None]]]
"""payload size -> a coroutine function making one call."""


def fast_caller(client: ForgeClient) -> Caller:
    def make(size: int) -> Callable[[], Awaitable[None]]:
        data = b"x" * size

        async def call() -> None:
            res = await client.invoke_result("echo", "echo", data, timeout=CALL_TIMEOUT_S)
            if not res.ok or len(res.output) != size:
                raise RuntimeError(f"bad result: {res.error}")

        return call

    return make


def invoke_bytes(size: int) -> tuple[bytes, dict[str, str]]:
    """Exactly what ForgeClient.invoke_result sends: body and headers."""
    body = encode(InvokeRequest(b"x" * size))
    return body, {HEADER_TIMEOUT_MS: str(int(CALL_TIMEOUT_S * 1000))}


def request_caller(nc: Client, subject: str) -> Caller:
    """nc.request with the client's bytes; used for ceiling A and for fast-raw."""

    def make(size: int) -> Callable[[], Awaitable[None]]:
        body, headers = invoke_bytes(size)

        async def call() -> None:
            await nc.request(subject, body, timeout=CALL_TIMEOUT_S + REPLY_GRACE_S, headers=headers)

        return call

    return make


def job_body(size: int) -> bytes:
    return encode(JobRequest("0" * 32, b"x" * size, 0, int(time.time() * 1000), ""))


def durable_caller(client: ForgeClient, router: ReplyRouter) -> Caller:
    def make(size: int) -> Callable[[], Awaitable[None]]:
        data = b"x" * size

        async def call() -> None:
            job_id = uuid.uuid4().hex
            fut = router.expect(job_id)
            try:
                await client.submit("echo", "echo", data, job_id=job_id)
                msg = await asyncio.wait_for(fut, CALL_TIMEOUT_S)
            finally:
                router.forget(job_id)
            res = decode(JobResult, msg.data)
            if not res.result.ok:
                raise RuntimeError(f"job failed: {res.result.error}")

        return call

    return make


def bare_js_caller(nc: Client, router: ReplyRouter) -> Caller:
    js = nc.jetstream(timeout=5)

    def make(size: int) -> Callable[[], Awaitable[None]]:
        body = job_body(size)  # the same bytes a durable submit stores

        async def call() -> None:
            job_id = uuid.uuid4().hex
            fut = router.expect(job_id)
            try:
                await js.publish(
                    BARE_JOBS_SUBJECT,
                    body,
                    stream=BARE_JOBS_STREAM,
                    headers={HEADER_MSG_ID: job_id},
                )
                await asyncio.wait_for(fut, CALL_TIMEOUT_S)
            finally:
                router.forget(job_id)

        return call

    return make


async def wait_first_result(
    client: ForgeClient, plugin: str, fn: str, data: bytes = b"x", timeout_s: float = 120.0
) -> float:
    """Poll until one call of ``plugin.fn`` succeeds; return perf_counter() at that moment."""
    give_up = time.monotonic() + timeout_s
    while True:
        try:
            res = await client.invoke_result(plugin, fn, data, timeout=5.0)
            if res.ok:
                return time.perf_counter()
            raise RuntimeError(f"{plugin}.{fn} failed: {res.error}")
        except (NoWorkers, PluginNotFound):
            if time.monotonic() > give_up:
                raise
            await asyncio.sleep(0.002)  # poll interval while the worker loads the plugin


def transport_key(window: int, size: int) -> str:
    return f"w{window}_p{size}"


async def section_transport(
    cfg: Config, root: Path, wanted: set[str], log: Callable[[str], None]
) -> dict[str, Any]:
    """Ceilings A and B, fast and durable path: same client, same windows and payloads."""
    cluster = Cluster(root / "transport")
    children: list[Child] = []
    client: ForgeClient | None = None
    worker: Proc | None = None
    try:
        cluster.start_coordinator()
        if wanted & {"fast", "durable"}:
            worker = cluster.start_worker("w-transport")
        client = await cluster.client()
        nc = client.nc
        targets: dict[str, Caller] = {}
        pids: dict[str, int] = {}  # the process serving each target
        nats_pid = cluster.nats.proc.pid if cluster.nats.proc else os.getpid()
        if worker is not None:
            pids.update({t: worker.popen.pid for t in ("fast", "fast-raw", "durable")})
        if "echo" in wanted:
            children.append(
                spawn_child("echo-server", ["--serve-echo", cluster.url], root / "echo.log")
            )
            pids["echo"] = children[-1].popen.pid
            targets["echo"] = request_caller(nc, ECHO_SUBJECT)
        if "jetstream" in wanted:
            children.append(
                spawn_child("jetstream-server", ["--serve-jetstream", cluster.url], root / "js.log")
            )
            pids["jetstream"] = children[-1].popen.pid
            bare = ReplyRouter(lambda m: m.subject.rsplit(".", 1)[-1])
            await bare.subscribe(nc, "bench.replies.*")
            targets["jetstream"] = bare_js_caller(nc, bare)
        if worker is not None:
            await client.deploy(echo_package(cluster, "echo"))
            await cluster.wait_ready(client, "echo", 1)
        if "fast" in wanted:
            targets["fast"] = fast_caller(client)
            targets["fast-raw"] = request_caller(nc, client.subjects.invoke("echo", "echo"))
        if "durable" in wanted:
            results = ReplyRouter(lambda m: m.subject.rsplit(".", 1)[-1])
            await results.subscribe(nc, client.subjects.results_all())
            targets["durable"] = durable_caller(client, results)

        for name, make in targets.items():
            for size in PAYLOADS:
                warm = await drive(make(size), 16, cfg.warmup, 30.0)
                if warm.errors:
                    raise RuntimeError(f"{name}: {warm.errors} errors while warming up")
        samples: dict[str, dict[str, list[Sample]]] = {
            name: {transport_key(w, p): [] for w in WINDOWS for p in PAYLOADS} for name in targets
        }
        for rep in range(cfg.repeats):
            for window in WINDOWS:
                for size in PAYLOADS:
                    for name, make in targets.items():
                        s = await measure(
                            make(size), window, cfg.count, cfg.max_seconds, pids[name], nats_pid
                        )
                        samples[name][transport_key(window, size)].append(s)
                        log(
                            f"  rep {rep + 1}/{cfg.repeats} {name:9} window {window:3} "
                            f"payload {size:5}: {s.rate:8.0f} calls/s p50 {s.p50_us:8.0f} us "
                            f"p99 {s.p99_us:8.0f} us; CPU/call server {s.server_cpu_us:5.0f} "
                            f"nats {s.nats_cpu_us:4.0f} client {s.client_cpu_us:4.0f} us"
                            + (f" ERRORS {s.errors}" if s.errors else "")
                        )
        out: dict[str, Any] = {}
        for name, by_key in samples.items():
            out[name] = {
                key: {"samples": [asdict(s) for s in ss], "median": summarize(ss)}
                for key, ss in by_key.items()
            }
        return out
    finally:
        if client is not None:
            try:
                await client.close()
            except Exception as e:  # closing must not hide the real outcome
                log(f"  (client close failed: {e!r})")
        for child in children:
            child.stop()
        cluster.close()


# --- section: CPU-bound plugin, 1 vs 2 execution threads --------------------------------------


async def section_cpu(cfg: Config, root: Path, log: Callable[[str], None]) -> dict[str, Any]:
    iterations, guest_ms = calibrate_cpu(cfg.cpu_ms)
    log(f"  cpu plugin: {iterations} iterations = {guest_ms:.1f} ms in-process")
    cluster = Cluster(root / "cpu")
    client: ForgeClient | None = None
    try:
        cluster.start_coordinator()
        client = await cluster.client()
        wasm = bytes(wasmtime.wat2wasm(cpu_wat(iterations)))
        await client.deploy(
            cluster.package(
                manifest_for("cpu", wasm, exports=["spin"], limits={"timeout_ms": 30_000}), wasm
            )
        )

        async def call() -> None:
            res = await client.invoke_result("cpu", "spin", b"abcd", timeout=30.0)
            if not res.ok:
                raise RuntimeError(f"cpu call failed: {res.error}")

        samples: dict[str, list[Sample]] = {"slots1": [], "slots2": []}
        cores: dict[str, list[float]] = {"slots1": [], "slots2": []}
        for rep in range(cfg.repeats):
            for slots in (1, 2):
                worker = cluster.start_worker(f"w-cpu-{slots}-{rep}", extra=["--slots", str(slots)])
                try:
                    await wait_first_result(client, "cpu", "spin")
                    await drive(call, cfg.cpu_window, cfg.cpu_window * 2, 30.0)  # grow the pool
                    before = cpu_seconds(worker.popen.pid)
                    s = await drive(call, cfg.cpu_window, cfg.cpu_count, cfg.max_seconds * 3)
                    # cores the worker actually got: on a shared machine, the ceiling
                    used = (cpu_seconds(worker.popen.pid) - before) / s.seconds
                finally:
                    worker.stop()
                samples[f"slots{slots}"].append(s)
                cores[f"slots{slots}"].append(used)
                log(
                    f"  rep {rep + 1}/{cfg.repeats} slots {slots}: {s.rate:6.1f} calls/s "
                    f"p50 {s.p50_us / 1000:6.1f} ms; worker used {used:.2f} cores"
                )
        rate1 = median([s.rate for s in samples["slots1"]])
        rate2 = median([s.rate for s in samples["slots2"]])
        per_rep = [
            b.rate / a.rate for a, b in zip(samples["slots1"], samples["slots2"], strict=True)
        ]
        return {
            "iterations": iterations,
            "guest_ms_in_process": guest_ms,
            "window": cfg.cpu_window,
            "samples": {k: [asdict(s) for s in v] for k, v in samples.items()},
            "rate_slots1": rate1,
            "rate_slots2": rate2,
            "ratio": rate2 / rate1 if rate1 else math.nan,
            "ratio_per_repeat": per_rep,
            "worker_cores_used": cores,
            "worker_cores_slots1": median(cores["slots1"]),
            "worker_cores_slots2": median(cores["slots2"]),
        }
    finally:
        if client is not None:
            await client.close()
        cluster.close()


# --- section: cold start and the compiled-module cache ---------------------------------------


def compile_seconds(proc: Proc, result: str) -> tuple[float, int]:
    """(sum of forge_compile_seconds, count) for cache ``result`` on this worker."""
    return (
        proc.metric("forge_compile_seconds_sum", result=result),
        int(proc.metric("forge_compile_seconds_count", result=result)),
    )


async def cold_once(
    cluster: Cluster, client: ForgeClient, kind: str, wasm: bytes, fn: str, tag: str
) -> dict[str, float]:
    """One repetition for one module: miss and hit, deploy-to-result and start-to-result."""
    fields = echo_fields() if kind == "small" else {"exports": [fn]}
    name_a, name_b = f"cold-{kind}-{tag}a", f"cold-{kind}-{tag}b"
    cache = cluster.root / f"cache-cold-{kind}-{tag}"
    out: dict[str, float] = {}

    # 1. miss: a worker with an empty cache is up; deploy, then poll for the first result.
    w1 = cluster.start_worker(f"w-cold-{kind}-{tag}-1", cache_dir=cache)
    try:
        await asyncio.sleep(0.5)  # let it finish syncing deployments
        t0 = time.perf_counter()
        await client.deploy(cluster.package(manifest_for(name_a, wasm, **fields), wasm))
        t_deployed = time.perf_counter()
        t1 = await wait_first_result(client, name_a, fn)
        out["deploy_rpc_miss_ms"] = (t_deployed - t0) * 1000
        out["deploy_to_result_miss_ms"] = (t1 - t0) * 1000
        # 2. hit: the same module under another name on the same worker.
        t0 = time.perf_counter()
        await client.deploy(cluster.package(manifest_for(name_b, wasm, **fields), wasm))
        t1 = await wait_first_result(client, name_b, fn)
        out["deploy_to_result_hit_ms"] = (t1 - t0) * 1000
        s, n = compile_seconds(w1, "miss")
        out["compile_miss_s"] = s / n if n else math.nan
        await client.undeploy(name_b)
    finally:
        w1.stop()

    # 3. hit: a second worker on the same cache dir, name_a already deployed.
    t0 = time.perf_counter()
    w2 = cluster.start_worker(f"w-cold-{kind}-{tag}-2", cache_dir=cache)
    try:
        t_ready = time.perf_counter()
        t1 = await wait_first_result(client, name_a, fn)
        out["worker_start_to_result_hit_ms"] = (t1 - t0) * 1000
        out["worker_ready_to_result_hit_ms"] = (t1 - t_ready) * 1000
        s, n = compile_seconds(w2, "hit")
        out["compile_hit_s"] = s / n if n else math.nan
    finally:
        w2.stop()

    # 4. miss again, for comparison: a worker with a fresh cache dir.
    t0 = time.perf_counter()
    w3 = cluster.start_worker(f"w-cold-{kind}-{tag}-3", cache_dir=cache.with_name(cache.name + "x"))
    try:
        t_ready = time.perf_counter()
        t1 = await wait_first_result(client, name_a, fn)
        out["worker_start_to_result_miss_ms"] = (t1 - t0) * 1000
        out["worker_ready_to_result_miss_ms"] = (t1 - t_ready) * 1000
    finally:
        w3.stop()
    await client.undeploy(name_a)
    return out


async def section_cold(cfg: Config, root: Path, log: Callable[[str], None]) -> dict[str, Any]:
    big = big_wasm(cfg.big_module_bytes)
    modules = {"small": (echo_wasm(), "echo"), "big": (big, "run")}
    cluster = Cluster(root / "cold")
    client: ForgeClient | None = None
    try:
        cluster.start_coordinator()
        client = await cluster.client()
        runs: dict[str, list[dict[str, float]]] = {k: [] for k in modules}
        for rep in range(cfg.cold_repeats):
            for kind, (wasm, fn) in modules.items():
                r = await cold_once(cluster, client, kind, wasm, fn, str(rep))
                runs[kind].append(r)
                log(
                    f"  rep {rep + 1}/{cfg.cold_repeats} {kind:5}: deploy->result miss "
                    f"{r['deploy_to_result_miss_ms']:7.1f} ms hit "
                    f"{r['deploy_to_result_hit_ms']:7.1f} ms; compile miss "
                    f"{r['compile_miss_s'] * 1000:8.2f} ms hit "
                    f"{r['compile_hit_s'] * 1000:6.2f} ms"
                )
        out: dict[str, Any] = {}
        for kind, (wasm, _fn) in modules.items():
            med = {k: median([r[k] for r in runs[kind]]) for k in runs[kind][0]}
            med["compile_ratio_miss_over_hit"] = med["compile_miss_s"] / med["compile_hit_s"]
            out[kind] = {"wasm_bytes": len(wasm), "runs": runs[kind], "median": med}
        return out
    finally:
        if client is not None:
            await client.close()
        cluster.close()


# --- section: worker memory ---------------------------------------------------------------


def instance_rss(count: int) -> dict[str, Any]:
    """In this process, no NATS: RSS of ``count`` more echo instances of one runtime, then
    of ``count`` more plugins (module loaded from serialized bytes as the cache does,
    runtime, one called instance each)."""
    import gc

    wasm = echo_wasm()
    engines = Engines()
    try:
        manifest = manifest_for("echo", wasm, **echo_fields())
        engine = engines.get(engine_settings_for(worker_limits(manifest)))
        serialized = bytes(wasmtime.Module(engine, wasm).serialize())

        def plugin() -> tuple[PluginRuntime, GuestInstance]:
            module = wasmtime.Module.deserialize(engine, serialized)
            runtime = build_runtime(engines, manifest, module)
            inst = runtime.new_instance()
            inst.call("echo", b"x" * 100, meta(5.0))
            return runtime, inst

        runtime, _ = plugin()
        gc.collect()
        base = rss_bytes(os.getpid())
        instances = []
        for _ in range(count):
            inst = runtime.new_instance()
            inst.call("echo", b"x" * 100, meta(5.0))
            instances.append(inst)
        gc.collect()
        with_instances = rss_bytes(os.getpid())
        plugins = [plugin() for _ in range(count)]
        gc.collect()
        with_plugins = rss_bytes(os.getpid())
        assert len(instances) == len(plugins) == count
    finally:
        engines.close()
    return {
        "count": count,
        "rss_base": base,
        "rss_with_instances": with_instances,
        "rss_with_plugins": with_plugins,
        "rss_per_instance_bytes": (with_instances - base) / count,
        "rss_per_plugin_bytes": (with_plugins - with_instances) / count,
    }


def instance_rss_subprocess(count: int) -> dict[str, Any]:
    """:func:`instance_rss` in a fresh process, so nothing else this bench did skews it."""
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--instance-rss", str(count)],
        capture_output=True,
        check=True,
        timeout=120,
    )
    result: dict[str, Any] = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    return result


def rss_by_kind(pid: int) -> dict[str, int]:
    """Resident bytes per kind of mapping (anonymous, heap, libwasmtime, other files)."""
    out = {"anon": 0, "heap": 0, "libwasmtime": 0, "files": 0, "other": 0, "mappings": 0}
    kind = "other"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(maxsplit=5)
        if "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
            name = head[5] if len(head) > 5 else ""
            out["mappings"] += 1
            if not name:
                kind = "anon"
            elif name == "[heap]":
                kind = "heap"
            elif "libwasmtime" in name:
                kind = "libwasmtime"
            elif name.startswith("/"):
                kind = "files"
            else:
                kind = "other"
        elif head[0] == "Rss:":
            out[kind] += int(head[1]) * 1024
    return out


async def section_memory(cfg: Config, root: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Worker RSS idle, after one plugin, after all; per idle pooled instance."""
    wasm = echo_wasm()
    linear = memory_pages(wasm) * 65536
    cluster = Cluster(root / "memory")
    client: ForgeClient | None = None
    try:
        cluster.start_coordinator()
        worker = cluster.start_worker("w-memory")
        pid = worker.popen.pid
        client = await cluster.client()
        await asyncio.sleep(1.0)
        rss0, kinds0 = settled_rss(pid), rss_by_kind(pid)
        names = [f"mem{i:03d}" for i in range(cfg.memory_plugins)]
        gate = asyncio.Semaphore(8)

        async def deploy(name: str) -> None:
            async with gate:
                await client.deploy(echo_package(cluster, name))

        # The first plugin pays one-off costs (compiler code paged in, first instance on
        # each thread); measuring after it gives the marginal cost of the others too.
        await deploy(names[0])
        await wait_first_result(client, names[0], "echo")
        rss1, kinds1 = settled_rss(pid), rss_by_kind(pid)
        instances1 = int(worker.metric("forge_instances_created_total"))
        await asyncio.gather(*(deploy(n) for n in names[1:]))
        for n in names:  # warm each pool: one call each
            await wait_first_result(client, n, "echo")
        await asyncio.sleep(1.0)
        rss_n, kinds_n = settled_rss(pid), rss_by_kind(pid)
        instances = int(worker.metric("forge_instances_created_total"))
        idle = int(worker.metric("forge_pool_instances", state="idle"))
        per_instance = (rss_n - rss0) / instances if instances else math.nan
        marginal = (rss_n - rss1) / (instances - instances1) if instances > instances1 else math.nan
        log(
            f"  RSS idle {rss0 / MIB:.1f} MiB, 1 plugin {rss1 / MIB:.1f} MiB, {len(names)} plugins "
            f"{rss_n / MIB:.1f} MiB, {instances} instances: {per_instance / 1024:.0f} KiB each, "
            f"{marginal / 1024:.0f} KiB each after the first"
        )
    finally:
        if client is not None:
            await client.close()
        cluster.close()
    local = await asyncio.to_thread(instance_rss_subprocess, cfg.memory_plugins)
    return {
        "plugins": len(names),
        "rss_idle_bytes": rss0,
        "rss_one_plugin_bytes": rss1,
        "rss_loaded_bytes": rss_n,
        "rss_by_kind": {"idle": kinds0, "one_plugin": kinds1, "loaded": kinds_n},
        "instances_created": instances,
        "instances_after_first": instances1,
        "pool_idle_instances": idle,
        "rss_per_instance_bytes": per_instance,
        "guest_linear_memory_bytes": linear,
        "rss_per_instance_minus_linear_bytes": per_instance - linear,
        "rss_per_instance_marginal_bytes": marginal,
        "in_process": local,
    }


# --- report ---------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    try:
        nats_version = subprocess.run(
            [server_binary(), "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except Exception as e:
        nats_version = f"unknown ({e})"
    versions = {}
    for pkg in ("wasmtime", "nats-py", "uvloop", "msgpack"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def git(*args: str) -> str:
        try:  # read-only queries; --no-optional-locks keeps status from touching the index
            done = subprocess.run(
                ["git", "--no-optional-locks", "-C", str(REPO), *args],
                capture_output=True,
                text=True,
                timeout=10,
            )
            return done.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "git_commit": git("rev-parse", "HEAD"),
        "git_modified_files": len(
            git("status", "--porcelain", "--untracked-files=no").splitlines()
        ),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "nats_server": nats_version,
        **versions,
        "loadavg_start": os.getloadavg(),
    }


@dataclass
class Target:
    name: str
    value: float
    unit: str
    op: str
    bound: float
    ok: bool = field(init=False)

    def __post_init__(self) -> None:
        v, b = self.value, self.bound
        checks = {">=": v >= b, "<=": v <= b, "<": v < b}
        self.ok = not math.isnan(v) and checks[self.op]


def evaluate(sections: dict[str, Any]) -> list[Target]:
    t: list[Target] = []

    def med(section: str, key: str) -> dict[str, float] | None:
        s = sections.get(section)
        if not isinstance(s, dict) or "error" in s:
            return None
        entry = s.get(key)
        return entry["median"] if isinstance(entry, dict) else None

    tr = sections.get("transport", {})
    if isinstance(tr, dict) and "error" not in tr:
        for size in PAYLOADS:
            k64, k1 = transport_key(64, size), transport_key(1, size)
            if "fast" in tr and "echo" in tr:
                f, e = tr["fast"][k64]["median"], tr["echo"][k64]["median"]
                t.append(
                    Target(
                        f"fast/echo throughput, window 64, {size} B",
                        f["rate"] / e["rate"],
                        "x",
                        ">=",
                        0.70,
                    )
                )
                f, e = tr["fast"][k1]["median"], tr["echo"][k1]["median"]
                t.append(
                    Target(
                        f"fast/echo median latency, window 1, {size} B",
                        f["p50_us"] / e["p50_us"],
                        "x",
                        "<=",
                        1.5,
                    )
                )
            if "durable" in tr and "jetstream" in tr:
                d, j = tr["durable"][k64]["median"], tr["jetstream"][k64]["median"]
                t.append(
                    Target(
                        f"durable/JetStream throughput, window 64, {size} B",
                        d["rate"] / j["rate"],
                        "x",
                        ">=",
                        0.60,
                    )
                )
    cpu = sections.get("cpu")
    if isinstance(cpu, dict) and "ratio" in cpu:
        t.append(Target("CPU-bound: 2 threads / 1 thread", cpu["ratio"], "x", ">=", 1.7))
    cold = sections.get("cold")
    if isinstance(cold, dict) and "small" in cold:
        t.append(
            Target(
                "cold start small: deploy -> first result (cache miss)",
                cold["small"]["median"]["deploy_to_result_miss_ms"],
                "ms",
                "<",
                150,
            )
        )
        t.append(
            Target(
                f"compile cache ~1 MB module ({cold['big']['wasm_bytes']} B): miss/hit",
                cold["big"]["median"]["compile_ratio_miss_over_hit"],
                "x",
                ">=",
                50,
            )
        )
    mem = sections.get("memory")
    if isinstance(mem, dict) and "rss_per_instance_bytes" in mem:
        t.append(
            Target(
                "RSS per idle pooled instance",
                mem["rss_per_instance_bytes"] / MIB,
                "MiB",
                "<",
                1.0,
            )
        )
        t.append(
            Target(
                "RSS per idle pooled instance minus guest linear memory",
                mem["rss_per_instance_minus_linear_bytes"] / MIB,
                "MiB",
                "<",
                1.0,
            )
        )
        t.append(
            Target(
                "  same, marginal (after the first plugin's one-off costs)",
                (mem["rss_per_instance_marginal_bytes"] - mem["guest_linear_memory_bytes"]) / MIB,
                "MiB",
                "<",
                1.0,
            )
        )
    guest = sections.get("guest")
    if isinstance(guest, dict) and "abi_call_overhead_us" in guest:
        t.append(
            Target(
                "guest export call: RawFunc add - C call",
                guest["export_call_overhead_us"],
                "us",
                "<=",
                5.0,
            )
        )
        t.append(
            Target(
                "forge/1 call: ForgeV1Instance.call - same C calls",
                guest["abi_call_overhead_us"],
                "us",
                "<=",
                5.0,
            )
        )
    return t


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]

    def fmt(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([fmt(headers), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)])


def num(v: float, digits: int = 0) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:,.{digits}f}"


def render(report: dict[str, Any]) -> str:
    out: list[str] = []
    sections = report["sections"]
    m = report["machine"]
    out.append(
        f"tree: {m['git_commit'][:12] or 'unknown'}"
        + (f" + {m['git_modified_files']} modified files" if m["git_modified_files"] else "")
    )
    out.append(
        f"machine: {m['cpu_count']} CPUs ({m['cpu_model']}), Python {m['python']}, "
        f"wasmtime {m['wasmtime']}, nats-py {m['nats-py']}, {m['nats_server']}; "
        f"load avg start {m['loadavg_start'][0]:.2f} end {m.get('loadavg_end', [math.nan])[0]:.2f}"
    )
    c = report["config"]
    out.append(
        f"config: {c['repeats']} repeat(s) per point, {c['count']} calls or {c['max_seconds']} s "
        "per measurement; medians shown"
    )
    tr = sections.get("transport")
    if isinstance(tr, dict) and "error" not in tr:
        rows = []
        for window in WINDOWS:
            for size in PAYLOADS:
                key = transport_key(window, size)
                for name in tr:
                    med = tr[name][key]["median"]
                    rows.append(
                        [
                            name,
                            str(window),
                            f"{size:,} B",
                            num(med["rate"]),
                            num(med["p50_us"]),
                            num(med["p99_us"]),
                            num(med.get("server_cpu_us", math.nan)),
                            num(med.get("nats_cpu_us", math.nan)),
                            num(med.get("client_cpu_us", math.nan)),
                            str(int(med["errors"])),
                        ]
                    )
        out += [
            "",
            "transport (one client connection, nats-py on uvloop; CPU = user+system time "
            "per call of the serving process, nats-server and the driving client)",
        ]
        out.append(
            table(
                [
                    "target",
                    "window",
                    "payload",
                    "calls/s",
                    "p50 us",
                    "p99 us",
                    "srv CPU us",
                    "nats CPU us",
                    "cli CPU us",
                    "errors",
                ],
                rows,
            )
        )
    cpu = sections.get("cpu")
    if isinstance(cpu, dict) and "ratio" in cpu:
        out += [
            "",
            f"CPU-bound plugin ({cpu['guest_ms_in_process']:.1f} ms/call in-process, "
            f"window {cpu['window']}, one worker):",
            table(
                ["slots", "calls/s", "worker CPU (cores)"],
                [
                    [
                        "1",
                        num(cpu["rate_slots1"], 1),
                        num(cpu.get("worker_cores_slots1", math.nan), 2),
                    ],
                    [
                        "2",
                        num(cpu["rate_slots2"], 1),
                        num(cpu.get("worker_cores_slots2", math.nan), 2),
                    ],
                ],
            ),
        ]
    cold = sections.get("cold")
    if isinstance(cold, dict) and "small" in cold:
        rows = []
        for key, label in (
            ("deploy_to_result_miss_ms", "deploy -> first result, cache miss (ms)"),
            ("deploy_to_result_hit_ms", "deploy -> first result, cache hit (ms)"),
            ("worker_start_to_result_miss_ms", "worker start -> first result, miss (ms)"),
            ("worker_start_to_result_hit_ms", "worker start -> first result, hit (ms)"),
            ("worker_ready_to_result_miss_ms", "worker ready line -> first result, miss (ms)"),
            ("worker_ready_to_result_hit_ms", "worker ready line -> first result, hit (ms)"),
        ):
            rows.append(
                [label, num(cold["small"]["median"][key], 1), num(cold["big"]["median"][key], 1)]
            )
        for key, label in (
            ("compile_miss_s", "compile, miss (ms)"),
            ("compile_hit_s", "compile, hit (ms)"),
        ):
            rows.append(
                [
                    label + " [forge_compile_seconds]",
                    num(cold["small"]["median"][key] * 1000, 2),
                    num(cold["big"]["median"][key] * 1000, 2),
                ]
            )
        rows.append(
            [
                "compile miss / hit",
                num(cold["small"]["median"]["compile_ratio_miss_over_hit"], 1),
                num(cold["big"]["median"]["compile_ratio_miss_over_hit"], 1),
            ]
        )
        out += ["", "cold start"]
        out.append(
            table(
                [
                    "",
                    f"small ({cold['small']['wasm_bytes']:,} B)",
                    f"big ({cold['big']['wasm_bytes']:,} B)",
                ],
                rows,
            )
        )
    mem = sections.get("memory")
    if isinstance(mem, dict) and "rss_idle_bytes" in mem:
        ip = mem["in_process"]
        kib = 1024
        rows = [
            ["RSS idle, nothing deployed", f"{num(mem['rss_idle_bytes'] / kib)} KiB"],
            [
                f"RSS with {mem['plugins']} deployed echo plugins, each called once",
                f"{num(mem['rss_loaded_bytes'] / kib)} KiB",
            ],
            [
                "RSS after the first plugin (one-off costs paid)",
                f"{num(mem['rss_one_plugin_bytes'] / kib)} KiB",
            ],
            ["instances created (forge_instances_created_total)", str(mem["instances_created"])],
            ["RSS per idle pooled instance", f"{num(mem['rss_per_instance_bytes'] / kib)} KiB"],
            [
                "  minus the guest's linear memory "
                f"({mem['guest_linear_memory_bytes'] // kib} KiB)",
                f"{num(mem['rss_per_instance_minus_linear_bytes'] / kib)} KiB",
            ],
            [
                "  marginal: (RSS_all - RSS_first) / (instances - first's)",
                f"{num(mem['rss_per_instance_marginal_bytes'] / kib)} KiB",
            ],
            [
                f"in-process, no NATS: per extra instance ({ip['count']})",
                f"{num(ip['rss_per_instance_bytes'] / kib)} KiB",
            ],
            [
                "in-process, no NATS: per extra plugin (module, runtime, 1 instance)",
                f"{num(ip['rss_per_plugin_bytes'] / kib)} KiB",
            ],
        ]
        out += ["", "worker memory", table(["", "RSS"], rows)]
    guest = sections.get("guest")
    if isinstance(guest, dict) and "median_us" in guest:
        g = guest["median_us"]
        out += [
            "",
            f"guest calls in-process (median us per call, {guest['calls_per_sample']:,} calls "
            "per sample)",
        ]
        out.append(
            table(
                ["call", "us/call"],
                [
                    ["ForgeV1Instance.call('echo', 100 B)", num(g["forge_call"], 2)],
                    ["same protocol, direct C calls (3 + 2 copies)", num(g["abi_floor_c"], 2)],
                    ["C call nop()", num(g["c_nop"], 2)],
                    ["C call add(1, 2)", num(g["c_add"], 2)],
                    ["RawFunc nop()", num(g["raw_nop"], 2)],
                    ["RawFunc add(1, 2)", num(g["raw_add"], 2)],
                    ["Func.__call__ nop()", num(g["func_call_nop"], 2)],
                    ["Func.__call__ add(1, 2)", num(g["func_call_add"], 2)],
                ],
            )
        )
    errors = {k: v["error"] for k, v in sections.items() if isinstance(v, dict) and "error" in v}
    for name, err in errors.items():
        out += ["", f"section {name} FAILED: {err}"]
    rows = [
        [
            t.name,
            f"{num(t.value, 3 if t.unit in ('x', 'MiB') else 1)} {t.unit}",
            f"{t.op} {t.bound:g}",
            "PASS" if t.ok else "MISS",
        ]
        for t in (Target(**{k: v for k, v in d.items() if k != "ok"}) for d in report["targets"])
    ]
    if rows:
        out += ["", "targets", table(["target", "measured", "target", "result"], rows)]
    return "\n".join(out)


# --- main --------------------------------------------------------------------------------------


async def run_bench(cfg: Config, wanted: list[str], log: Callable[[str], None]) -> dict[str, Any]:
    report: dict[str, Any] = {"machine": machine_info(), "config": asdict(cfg), "sections": {}}
    report["config"].update(windows=WINDOWS, payloads=PAYLOADS, sections=wanted)
    sections: dict[str, Any] = report["sections"]
    with tempfile.TemporaryDirectory(prefix="forge-perf-") as tmp:
        root = Path(tmp)
        plan: list[tuple[str, Callable[[], Awaitable[dict[str, Any]]]]] = []

        async def guest() -> dict[str, Any]:
            return section_guest(cfg)

        if "guest" in wanted:
            plan.append(("guest", guest))
        transport = {s for s in wanted if s in TRANSPORT}
        if transport:
            plan.append(("transport", lambda: section_transport(cfg, root, transport, log)))
        if "cpu" in wanted:
            plan.append(("cpu", lambda: section_cpu(cfg, root, log)))
        if "cold" in wanted:
            plan.append(("cold", lambda: section_cold(cfg, root, log)))
        if "memory" in wanted:
            plan.append(("memory", lambda: section_memory(cfg, root, log)))
        timing: dict[str, Any] = {}
        report["section_timing"] = timing
        for name, run in plan:
            log(f"[{name}]")
            started, load = time.monotonic(), os.getloadavg()[0]
            try:
                sections[name] = await run()
            except Exception as e:
                log(traceback.format_exc())
                sections[name] = {"error": f"{type(e).__name__}: {e}"}
            timing[name] = {
                "seconds": time.monotonic() - started,
                "loadavg_1m_start": load,
                "loadavg_1m_end": os.getloadavg()[0],
            }
            log(f"[{name}] {timing[name]['seconds']:.1f} s")
    report["machine"]["loadavg_end"] = os.getloadavg()
    report["targets"] = [asdict(t) for t in evaluate(sections)]
    return report


async def interruptible(work: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    """Run ``work``; SIGTERM or SIGINT cancels it, so every finally stops its processes."""
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    return await task


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small counts, one repetition")
    p.add_argument("--json", type=Path, help="write every sample, median and ratio here")
    p.add_argument("--only", nargs="+", choices=SECTIONS, metavar="NAME", help=", ".join(SECTIONS))
    p.add_argument("--serve-echo", metavar="URL", help=argparse.SUPPRESS)
    p.add_argument("--serve-jetstream", metavar="URL", help=argparse.SUPPRESS)
    p.add_argument("--instance-rss", type=int, metavar="N", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.serve_echo:
        uvloop.run(serve_echo(a.serve_echo))
        return
    if a.serve_jetstream:
        uvloop.run(serve_jetstream(a.serve_jetstream))
        return
    if a.instance_rss:
        print(json.dumps(instance_rss(a.instance_rss)))
        return

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    cfg = Config.make(a.quick)
    wanted = [s for s in SECTIONS if not a.only or s in a.only]
    try:
        report = uvloop.run(interruptible(run_bench(cfg, wanted, log)))
    except asyncio.CancelledError:
        log("interrupted; every process this bench started has been stopped")
        sys.exit(130)
    print(render(report), flush=True)
    if a.json:
        a.json.write_text(json.dumps(report, indent=1, default=str))
    if any(isinstance(v, dict) and "error" in v for v in report["sections"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
