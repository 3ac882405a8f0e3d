"""Placement: which live workers host each plugin deployed with ``replicas`` > 0.

The coordinator follows the deployments and assignments buckets (watches, see
:class:`BucketMirror`) and every heartbeat period computes from them and the worker
registry, with the pure function :func:`place_all`, one assignment per
record with replicas > 0; an assignment is written to the assignments bucket (key =
plugin) only when it changes. Records with replicas == 0 have no assignment (every
worker hosts them). Workers read the bucket themselves: the coordinator is never on
the call path, and with it stopped workers keep what they hold.

For each record (:func:`place`):

- The current assignees are kept, in order, while they are alive, carry the record's
  labels and their memory budget still holds it; then the missing replicas are filled
  with eligible workers, preferring zones (label ``zone``) not used yet, then the
  workers with the fewest assigned plugins. An assignment only changes where it must.
- Memory: a record needs :func:`memory_need` bytes, the sum over its versions of
  ``limits.memory_mb`` MiB times ``limits.pool_size`` (a version keeps at most
  ``pool_size`` instances, each with at most ``memory_mb`` of linear memory; the worker
  may cap both lower, so this is an upper bound). A worker with a budget
  (``--memory-budget``, heartbeat ``memory_budget_bytes``; 0 means unlimited) only takes
  a plugin while the needs of everything placed on it fit: the records with replicas
  == 0 count on every worker, the others where they are assigned. When no worker
  fits, the assignment is short (fewer workers than replicas) and :func:`explain_short`
  says why; the coordinator logs it and ``forgeone list`` shows it.

Rebalancing (:func:`best_move`): a worker that joins only fills missing replicas, so
after that pass, at most :data:`MOVES_PER_TICK` replica per tick (cluster-wide) moves
from a worker to one that holds at least 2 fewer plugins, choosing the pair with the
largest difference. The destination must carry the labels, have the memory and not
reduce the number of zones the plugin spans; only plugins whose replicas are all ready
(and none moving) are moved. Make before break: the move writes the destination in
place of the source and the source after the ``replicas`` targets, so the assignment
briefly lists replicas + 1 workers; entries beyond ``replicas`` are *leaving* and are
kept (still serving) until every target reports the plugin ready, then dropped. The
same rule keeps extra replicas serving when ``replicas`` is lowered. Each move lowers
the sum of squared loads, and a move back would need the opposite 2-plugin gap, so
moves stop once every eligible pair is within 1 plugin: no thrashing. A worker's load
counts the plugins it is a target for (a leaving host no longer counts, so several moves
off one worker cannot overshoot); its memory counts leaving ones too, since they are still
loaded. Nothing moves while the coordinator warms up after a start. A destination
that fails to load the plugin keeps the source serving (``forgeone list`` shows the
failure) until the operator acts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

from nats.js.kv import KeyValue

from schemas.codec import DecodeError, Struct, decode, encode
from schemas.manifest import MIB
from schemas.messages import Assignment, DeploymentRecord, Heartbeat

from .bucket_mirror import BucketMirror
from .registry import MISSED_BEATS, WorkerRegistry

log = logging.getLogger("forge.coordinator.placement")

#: Period when no worker is alive to tell us its heartbeat interval, seconds.
DEFAULT_PERIOD_S = 2.0
#: After the coordinator starts, assignees it has not heard from yet are kept this long
#: (its registry starts empty; a restart must not take plugins off healthy workers).
WARMUP_S = MISSED_BEATS * DEFAULT_PERIOD_S
#: Replica moves started per placement tick, over all plugins.
MOVES_PER_TICK = 1
#: A move needs the source to hold at least this many more plugins than the destination.
MIN_LOAD_GAP = 2


ZONE_LABEL = "zone"
M = TypeVar("M", bound=Struct)


def eligible(worker: Heartbeat, labels: Mapping[str, str]) -> bool:
    """A worker may host a record if it carries every one of the record's labels."""
    return all(worker.labels.get(k) == v for k, v in labels.items())


def memory_need(record: DeploymentRecord) -> int:
    """Bytes a worker may spend on ``record``: per version, ``memory_mb`` MiB for each of
    at most ``pool_size`` instances."""
    return sum(
        v.manifest.limits.memory_mb * MIB * v.manifest.limits.pool_size for v in record.versions
    )


def fits(worker: Heartbeat, used: int, need: int) -> bool:
    """Whether ``need`` more bytes fit in the worker's budget, ``used`` being taken."""
    budget = worker.memory_budget_bytes
    return budget == 0 or used + need <= budget


def is_ready(worker: Heartbeat, plugin: str) -> bool:
    """Whether the worker's heartbeat lists some version of ``plugin`` ready."""
    return any(p.plugin == plugin and p.state == "ready" for p in worker.plugins)


def _zone(worker: Heartbeat) -> str:
    return worker.labels.get(ZONE_LABEL, "")


def mib(n: int) -> str:
    return f"{n / MIB:.0f}MiB"


@dataclass(frozen=True, slots=True)
class Placed:
    """Where one record should run."""

    target: list[str]
    """The workers that should host it, at most ``replicas``."""
    leaving: list[str] = field(default_factory=list)
    """Workers still serving it until every target is ready (make before break)."""
    short: str = ""
    """Why there are fewer targets than replicas; empty when there are enough."""
    moved: tuple[str, str] | None = None
    """(from, to) when this tick started moving a replica."""

    @property
    def workers(self) -> list[str]:
        """The assignment as written: targets first, then the leaving workers."""
        return [*self.target, *self.leaving]


def place(
    record: DeploymentRecord,
    current: Sequence[str],
    workers: Iterable[Heartbeat],
    load: Mapping[str, int] | None = None,
    used: Mapping[str, int] | None = None,
    keep_unseen: bool = False,
) -> Placed:
    """Where ``record`` should run, given its ``current`` assignment.

    ``load`` (plugins per worker) and ``used`` (bytes per worker) count everything
    placed except ``record``. The first ``replicas`` of ``current`` that are alive and
    still fit (or unseen, with ``keep_unseen``) stay targets; others that fit are
    leaving, kept while some target is not ready yet; missing targets are added.
    """
    load = load or {}
    used = used or {}
    alive = {w.worker_id: w for w in workers}
    need = memory_need(record)

    def fits_here(wid: str) -> bool:
        w = alive.get(wid)
        return w is not None and eligible(w, record.labels) and fits(w, used.get(wid, 0), need)

    target: list[str] = []
    leaving: list[str] = []
    for wid in dict.fromkeys(current):
        if fits_here(wid) or (keep_unseen and wid not in alive):
            (target if len(target) < record.replicas else leaving).append(wid)
    zones = {_zone(alive[w]) for w in target if w in alive}
    candidates = [wid for wid in sorted(alive) if wid not in target and fits_here(wid)]
    while len(target) < record.replicas and candidates:
        pick = min(candidates, key=lambda w: (_zone(alive[w]) in zones, load.get(w, 0), w))
        candidates.remove(pick)
        target.append(pick)
        zones.add(_zone(alive[pick]))
    if all(w in alive and is_ready(alive[w], record.plugin) for w in target):
        leaving = []
    else:
        leaving = [
            w
            for w in leaving
            if (keep_unseen and w not in alive) or is_ready(alive[w], record.plugin)
        ]
    short = ""
    if len(target) < record.replicas:
        short = explain_short(record, target, alive.values(), used)
    return Placed(target, leaving, short)


def explain_short(
    record: DeploymentRecord,
    hosting: Sequence[str],
    workers: Iterable[Heartbeat],
    used: Mapping[str, int],
) -> str:
    """Why only ``hosting`` of the wanted replicas could be placed."""
    head = f"placed {len(hosting)} of {record.replicas}"
    reasons = _lacking(record, hosting, workers, used)
    return f"{head}: {'; '.join(reasons)}" if reasons else head


def _lacking(
    record: DeploymentRecord,
    hosting: Sequence[str],
    workers: Iterable[Heartbeat],
    used: Mapping[str, int],
) -> list[str]:
    """The live workers besides ``hosting`` that lack the labels or the free memory."""
    others = [w for w in workers if w.worker_id not in hosting]
    need = memory_need(record)
    no_labels = [w for w in others if not eligible(w, record.labels)]
    no_memory = [
        w
        for w in others
        if eligible(w, record.labels) and not fits(w, used.get(w.worker_id, 0), need)
    ]
    reasons = []
    if not others:
        reasons.append("no other live worker")
    if no_labels:
        wanted = ",".join(f"{k}={v}" for k, v in sorted(record.labels.items()))
        reasons.append(f"{len(no_labels)} worker(s) lack labels {wanted}")
    if no_memory:
        free = max(w.memory_budget_bytes - used.get(w.worker_id, 0) for w in no_memory)
        reasons.append(
            f"{len(no_memory)} worker(s) lack memory (need {mib(need)}, "
            f"most free {mib(max(0, free))})"
        )
    return reasons


def best_move(
    record: DeploymentRecord,
    placed: Placed,
    workers: Iterable[Heartbeat],
    load: Mapping[str, int],
    used: Mapping[str, int],
) -> tuple[int, str, str] | None:
    """The most useful move of one of ``record``'s replicas, as (load gap, from, to).

    ``load`` and ``used`` include ``record`` where ``placed`` puts it. None unless every
    target is ready and nothing is leaving, and some eligible worker holds at least
    :data:`MIN_LOAD_GAP` fewer plugins than a target, has the memory and keeps the
    number of zones the plugin spans.
    """
    alive = {w.worker_id: w for w in workers}
    target = placed.target
    if placed.leaving or len(target) < record.replicas:
        return None
    if not all(w in alive and is_ready(alive[w], record.plugin) for w in target):
        return None
    need = memory_need(record)
    zones = len({_zone(alive[w]) for w in target})
    best: tuple[int, str, str] | None = None
    for dst, d in sorted(alive.items()):
        if dst in target or not eligible(d, record.labels) or not fits(d, used.get(dst, 0), need):
            continue
        for src in sorted(target):
            gap = load.get(src, 0) - load.get(dst, 0)
            after = {_zone(alive[w]) for w in target if w != src} | {_zone(d)}
            if gap < MIN_LOAD_GAP or len(after) < zones:
                continue
            if best is None or gap > best[0]:
                best = (gap, src, dst)
    return best


def _count(
    record: DeploymentRecord,
    placed: Placed,
    alive: set[str],
    load: Counter[str],
    used: Counter[str],
    sign: int,
) -> None:
    """Add (sign 1) or remove (sign -1) ``record``'s share of the load and memory."""
    need = memory_need(record)
    for w in placed.target:
        if w in alive:
            load[w] += sign
    for w in placed.workers:
        if w in alive:
            used[w] += sign * need


def place_all(
    records: Mapping[str, DeploymentRecord],
    current: Mapping[str, Sequence[str]],
    workers: Sequence[Heartbeat],
    keep_unseen: bool = False,
    max_moves: int = MOVES_PER_TICK,
) -> dict[str, Placed]:
    """Placement of every record with replicas > 0, from the ``current`` assignments
    (plugin -> workers): one :func:`place` per record in name order, then at most
    ``max_moves`` rebalancing moves (none while ``keep_unseen``)."""
    alive = {w.worker_id for w in workers}
    everywhere = sum(memory_need(r) for r in records.values() if r.replicas == 0)
    load: Counter[str] = Counter()
    used: Counter[str] = Counter({w: everywhere for w in alive})
    placed_records = {p: r for p, r in sorted(records.items()) if r.replicas > 0}
    before: dict[str, Placed] = {}
    for plugin, record in placed_records.items():
        cur = list(dict.fromkeys(current.get(plugin, [])))
        live = [w for w in cur if w in alive]
        before[plugin] = Placed(live[: record.replicas], live[record.replicas :])
        _count(record, before[plugin], alive, load, used, 1)
    out: dict[str, Placed] = {}
    for plugin, record in placed_records.items():
        _count(record, before[plugin], alive, load, used, -1)
        out[plugin] = place(record, current.get(plugin, []), workers, load, used, keep_unseen)
        _count(record, out[plugin], alive, load, used, 1)
    for _ in range(0 if keep_unseen else max_moves):
        moves = [
            (m, plugin)
            for plugin, record in placed_records.items()
            if (m := best_move(record, out[plugin], workers, load, used)) is not None
        ]
        if not moves:
            break
        (_, src, dst), plugin = max(moves, key=lambda m: (m[0][0], m[1]))
        record = placed_records[plugin]
        _count(record, out[plugin], alive, load, used, -1)
        target = [dst if w == src else w for w in out[plugin].target]
        out[plugin] = replace(out[plugin], target=target, leaving=[src], moved=(src, dst))
        _count(record, out[plugin], alive, load, used, 1)
    return out


class Placement:
    def __init__(
        self, deployments: KeyValue, assignments: KeyValue, registry: WorkerRegistry
    ) -> None:
        self.deployments = BucketMirror(deployments, "deployments")
        self.assignments = BucketMirror(assignments, "assignments")
        self.registry = registry
        self._started = time.monotonic()
        self._short: dict[str, str] = {}
        self._bad: dict[str, bytes] = {}

    def period(self, workers: Sequence[Heartbeat]) -> float:
        """The shortest heartbeat interval of the live workers (bounded)."""
        if not workers:
            return DEFAULT_PERIOD_S
        return max(0.05, min(DEFAULT_PERIOD_S, min(w.interval_ms for w in workers) / 1000))

    async def run(self) -> None:
        watches = [asyncio.create_task(m.run()) for m in (self.deployments, self.assignments)]
        try:
            while True:
                try:
                    if self.deployments.is_synced() and self.assignments.is_synced():
                        await self.tick()
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # the bus is down or a bucket is missing: next period
                    log.warning("event=placement_failed error=%r", e)
                await asyncio.sleep(self.period(self.registry.alive()))  # placement period
        finally:
            for task in watches:
                task.cancel()
            await asyncio.gather(*watches, return_exceptions=True)

    def _decoded(self, mirror: BucketMirror, cls: type[M]) -> dict[str, M]:
        """The mirror's values that decode (each bad value is logged once)."""
        out: dict[str, M] = {}
        for key, value in mirror.values.items():
            try:
                out[key] = decode(cls, value)
            except DecodeError as e:
                if self._bad.get(f"{mirror.what}/{key}") != value:
                    self._bad[f"{mirror.what}/{key}"] = value
                    log.warning("event=bad_value bucket=%s key=%s error=%s", mirror.what, key, e)
        return out

    async def tick(self) -> None:
        records = self._decoded(self.deployments, DeploymentRecord)
        current = self._decoded(self.assignments, Assignment)
        for plugin in sorted(set(current) - {p for p, r in records.items() if r.replicas > 0}):
            await self.assignments.kv.delete(plugin)
            self.assignments.values.pop(plugin, None)
            self._short.pop(plugin, None)
            log.info("event=unassigned plugin=%s", plugin)
        warming = time.monotonic() - self._started < WARMUP_S
        placed = place_all(
            records,
            {p: a.workers for p, a in current.items()},
            self.registry.alive(),
            keep_unseen=warming,
        )
        for plugin, where in placed.items():
            self._log_short(plugin, where.short)
            await self._write(plugin, records[plugin], current.get(plugin), where)

    def _log_short(self, plugin: str, short: str) -> None:
        """Log why a plugin is short of replicas, once per change of reason."""
        if short == self._short.get(plugin, ""):
            return
        if short:
            self._short[plugin] = short
            log.warning("event=placement_short plugin=%s reason=%r", plugin, short)
        else:
            self._short.pop(plugin, None)
            log.info("event=placement_full plugin=%s", plugin)

    async def _write(
        self, plugin: str, record: DeploymentRecord, prev: Assignment | None, where: Placed
    ) -> None:
        chosen = where.workers
        if prev is not None and prev.workers == chosen and prev.replicas == record.replicas:
            return
        value = encode(Assignment(plugin, chosen, record.replicas, int(time.time() * 1000)))
        await self.assignments.kv.put(plugin, value)
        self.assignments.values[plugin] = value  # the next tick must not wait for the watch
        if where.moved is not None:
            log.info("event=moving plugin=%s from=%s to=%s", plugin, *where.moved)
        log.info(
            "event=assigned plugin=%s replicas=%d workers=%s leaving=%s",
            plugin,
            record.replicas,
            ",".join(where.target) or "-",
            ",".join(where.leaving) or "-",
        )


def short_reason(
    record: DeploymentRecord, workers: Sequence[Heartbeat], records: Iterable[DeploymentRecord]
) -> str:
    """Why ``record`` is ready on fewer workers than wanted, judged from heartbeats alone
    (what ``forgeone list`` sees): a worker's memory in use is the need of the other
    plugins it reports."""
    hosting = [w for w in workers if any(p.plugin == record.plugin for p in w.plugins)]
    if record.replicas == 0 or len(hosting) >= record.replicas:
        pending = workers if record.replicas == 0 else hosting
        waiting = [w.worker_id for w in pending if not is_ready(w, record.plugin)]
        return f"not ready on {', '.join(waiting)}" if waiting else ""
    needs = {r.plugin: memory_need(r) for r in records}
    used = {
        w.worker_id: sum(needs.get(p, 0) for p in {lp.plugin for lp in w.plugins} - {record.plugin})
        for w in workers
    }
    ids = [w.worker_id for w in hosting]
    reasons = _lacking(record, ids, workers, used) or ["waiting for assigned workers to load it"]
    return f"on {len(ids)} of {record.replicas}: {'; '.join(reasons)}"
