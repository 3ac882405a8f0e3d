"""Stream triggers: throughput against a bare consumer, and exactly one output through a SIGKILL.

    python bench/triggers_bench.py bench --events 20000
    python bench/triggers_bench.py kill  --events 10000 --workers 2

``bench``: one nats-server, coordinator and worker on loopback; a stream of
pre-published events; first a bare nats-py JetStream consumer in this process
does what a trigger does per event (fetch, publish the payload to an output
stream with a message id, ack; up to the same number in flight), then a stream
trigger running the ``echo`` plugin does the same through the worker. Prints
both rates and trigger / bare (goal: at least 0.6).

``kill``: a stream trigger over pre-published events with two (or more) worker
processes; one is killed with SIGKILL once a third of the outputs exist. Every
event must yield exactly one message in the output stream: prints the events,
the outputs stored (total) and the distinct source sequences among them.
The test suite runs a smaller ``kill``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nats
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig
from nats.js.client import JetStreamContext

from coordinator.client import ForgeClient
from schemas.messages import HEADER_MSG_ID
from schemas.triggers import HEADER_STREAM_SEQ, SourceKind, TriggerSpec
from tests.cluster import Cluster, eventually

SOURCE_STREAM = "BENCH_SRC"
IN_FLIGHT = 64
#: Events published per round trip while filling the source stream.
PUBLISH_WINDOW = 512


@dataclass
class BenchReport:
    events: int
    bare_per_s: float
    trigger_per_s: float
    ratio: float

    def line(self) -> str:
        return (
            f"{self.events} events: bare consumer {self.bare_per_s:,.0f}/s, trigger "
            f"{self.trigger_per_s:,.0f}/s, ratio {self.ratio:.2f} (goal >= 0.6)"
        )


@dataclass
class KillReport:
    events: int
    outputs_total: int
    outputs_distinct: int
    lost: int
    fault: str
    seconds: float

    def line(self) -> str:
        return (
            f"{self.events} events: {self.outputs_total} outputs stored, "
            f"{self.outputs_distinct} distinct, {self.lost} lost; {self.fault}; "
            f"{self.seconds:.1f}s"
        )


async def make_streams(js: JetStreamContext, outputs: dict[str, str]) -> None:
    """The user's source stream and one output stream per {name: subject pattern}."""
    await js.add_stream(StreamConfig(name=SOURCE_STREAM, subjects=["src.>"]))
    for name, pattern in outputs.items():
        await js.add_stream(StreamConfig(name=name, subjects=[pattern], duplicate_window=120.0))


async def publish_events(js: JetStreamContext, count: int, keys: int = 16) -> None:
    """``count`` events on ``src.<key>.created``, stored (acked) before returning."""
    for start in range(0, count, PUBLISH_WINDOW):
        await asyncio.gather(
            *(
                js.publish(f"src.k{i % keys}.created", f'{{"n":{i}}}'.encode())
                for i in range(start, min(start + PUBLISH_WINDOW, count))
            )
        )


async def stored(js: JetStreamContext, stream: str) -> int:
    return int((await js.stream_info(stream)).state.messages)


async def read_all(js: JetStreamContext, stream: str, subject: str, count: int) -> list[Msg]:
    """Every message of ``stream`` (``count`` of them), through an ephemeral consumer."""
    psub = await js.pull_subscribe(
        subject,
        stream=stream,
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, inactive_threshold=30.0
        ),
    )
    out: list[Msg] = []
    give_up = time.monotonic() + 120
    while len(out) < count and time.monotonic() < give_up:
        try:
            out += await psub.fetch(min(1000, count - len(out)), timeout=2)
        except nats.errors.TimeoutError:
            continue
    await psub.unsubscribe()
    return out


async def bare_consumer(js: JetStreamContext, count: int, durable: str, output: str) -> float:
    """Fetch, publish with a message id, ack; up to IN_FLIGHT at once. Events per second."""
    await js.add_consumer(
        SOURCE_STREAM,
        ConsumerConfig(durable_name=durable, deliver_policy=DeliverPolicy.ALL, ack_wait=30.0),
    )
    psub = await js.pull_subscribe_bind(durable=durable, stream=SOURCE_STREAM)
    done = 0
    held = 0
    freed = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()

    async def one(msg: Msg) -> None:
        nonlocal done, held
        seq = msg.metadata.sequence.stream
        subject = f"{output}." + msg.subject.split(".")[1]
        await js.publish(subject, msg.data, headers={HEADER_MSG_ID: f"{durable}:{seq}"})
        await msg.ack()
        done += 1
        held -= 1
        freed.set()

    started = time.perf_counter()
    give_up = time.monotonic() + 300
    while done < count and time.monotonic() < give_up:
        free = IN_FLIGHT - held
        if free < max(1, IN_FLIGHT // 4):  # the same refill rule as the trigger runner
            freed.clear()
            await freed.wait()
            continue
        try:
            msgs = await psub.fetch(min(free, 256), timeout=1)
        except nats.errors.TimeoutError:
            continue
        for msg in msgs:
            held += 1
            task = asyncio.create_task(one(msg))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    elapsed = time.perf_counter() - started
    await psub.unsubscribe()
    return count / elapsed


def trigger_spec(name: str, output: str, **kw: object) -> TriggerSpec:
    return TriggerSpec(
        name=name,
        source=SourceKind.STREAM,
        plugin="echo",
        fn="echo",
        stream=SOURCE_STREAM,
        start="all",
        output=output,
        max_in_flight=IN_FLIGHT,
        **kw,  # type: ignore[arg-type]
    )


async def run_bench(root: Path, events: int = 20_000, rounds: int = 3) -> BenchReport:
    """``rounds`` alternating runs of each over the same events; medians compared, so
    that load from elsewhere on the machine weighs on both alike."""
    cluster = Cluster(root)
    try:
        cluster.start_coordinator()
        cluster.start_worker("w0")
        client = await ForgeClient.connect(cluster.url)
        js = client.nc.jetstream(timeout=10)
        await client.deploy(cluster.example_package("echo"))
        await cluster.wait_ready(client, "echo", 1)
        await make_streams(js, {"BENCH_OUT": "outb.>", "BENCH_OUTT": "outt.>"})
        await publish_events(js, events)
        bare: list[float] = []
        trig: list[float] = []
        for r in range(rounds):
            bare.append(await bare_consumer(js, events, f"bare{r}", f"outb.r{r}"))

            started = time.perf_counter()
            await client.add_trigger(trigger_spec(f"bench{r}", f"outt.r{r}.{{2}}"))

            async def all_out(r: int = r) -> bool:
                return await stored(js, "BENCH_OUTT") >= events * (r + 1)

            await eventually(all_out, 300, "every trigger output")
            trig.append(events / (time.perf_counter() - started))
            await client.remove_trigger(f"bench{r}")
        await client.close()
        b, t = statistics.median(bare), statistics.median(trig)
        return BenchReport(events, b, t, t / b)
    finally:
        cluster.close()


async def run_kill(
    root: Path, events: int = 10_000, workers: int = 2, ack_wait_s: float = 2.0
) -> KillReport:
    cluster = Cluster(root)
    try:
        cluster.start_coordinator()
        procs = [cluster.start_worker(f"w{i}") for i in range(workers)]
        client = await ForgeClient.connect(cluster.url)
        js = client.nc.jetstream(timeout=10)
        await client.deploy(cluster.example_package("echo"))
        await cluster.wait_ready(client, "echo", workers)
        await make_streams(js, {"KILL_OUT": "out.>"})
        await publish_events(js, events)

        started = time.monotonic()
        await client.add_trigger(
            trigger_spec(
                "survive",
                "out.{2}.{3}",
                ack_wait_ms=int(ack_wait_s * 1000),
                backoff_ms=[100],
                max_deliver=20,
            )
        )

        async def a_third() -> bool:
            return await stored(js, "KILL_OUT") >= events // 3

        await eventually(a_third, 120, "a third of the outputs")
        procs[0].stop("kill")
        fault = f"SIGKILL {procs[0].name} at {await stored(js, 'KILL_OUT')} outputs"

        async def finished() -> bool:
            info = await js.consumer_info(
                SOURCE_STREAM, client.subjects.trigger_consumer("survive")
            )
            return await stored(js, "KILL_OUT") >= events and not (
                info.num_pending or info.num_ack_pending
            )

        await eventually(finished, 300, "every event handled and acked")
        seconds = time.monotonic() - started
        total = await stored(js, "KILL_OUT")
        msgs = await read_all(js, "KILL_OUT", "out.>", total)
        distinct = {(m.headers or {}).get(HEADER_STREAM_SEQ) for m in msgs}
        await client.close()
        return KillReport(events, total, len(distinct), events - len(distinct), fault, seconds)
    finally:
        cluster.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("mode", choices=["bench", "kill"])
    p.add_argument("--events", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    import uvloop

    with tempfile.TemporaryDirectory(prefix="forge-triggers-") as tmp:
        report: BenchReport | KillReport
        if a.mode == "bench":
            report = uvloop.run(run_bench(Path(tmp), a.events or 20_000, a.rounds))
        else:
            report = uvloop.run(run_kill(Path(tmp), a.events or 10_000, a.workers))
    print(json.dumps(asdict(report)) if a.json else report.line())
    if isinstance(report, KillReport) and (report.lost or report.outputs_total != report.events):
        sys.exit(1)


if __name__ == "__main__":
    main()
