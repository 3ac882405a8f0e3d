"""Placement: which live workers host each plugin deployed with ``replicas`` > 0.

Every heartbeat period the coordinator reads the deployments bucket and the worker
registry and, for each record with replicas > 0, keeps the current assignees that are
still alive and still carry the record's labels, then fills up to ``replicas`` with
eligible workers, preferring zones (label ``zone``) not used yet, then the workers with
the fewest assigned plugins. The result is written to the assignments bucket (key =
plugin) only when it changes. Records with replicas == 0 have no assignment (every
worker hosts them). Workers read the bucket themselves: the coordinator is never on
the call path, and with it stopped workers keep what they hold.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterable, Sequence

from nats.js.errors import KeyNotFoundError, NoKeysError
from nats.js.kv import KeyValue

from schemas.codec import DecodeError, decode, encode
from schemas.messages import Assignment, DeploymentRecord, Heartbeat

from .registry import MISSED_BEATS, WorkerRegistry

log = logging.getLogger("forge.coordinator.placement")

#: Period when no worker is alive to tell us its heartbeat interval, seconds.
DEFAULT_PERIOD_S = 2.0
#: After the coordinator starts, assignees it has not heard from yet are kept this long
#: (its registry starts empty; a restart must not take plugins off healthy workers).
WARMUP_S = MISSED_BEATS * DEFAULT_PERIOD_S

ZONE_LABEL = "zone"


def eligible(worker: Heartbeat, labels: dict[str, str]) -> bool:
    """A worker may host a record if it carries every one of the record's labels."""
    return all(worker.labels.get(k) == v for k, v in labels.items())


def place(
    record: DeploymentRecord,
    current: Sequence[str],
    workers: Iterable[Heartbeat],
    load: Counter[str],
    keep_unseen: bool = False,
) -> list[str]:
    """The workers that should host ``record``; updates ``load`` (plugins per worker).

    ``current``'s workers come first, in order, while they are alive and eligible (or
    unseen, with ``keep_unseen``); new ones are appended, so an assignment only changes
    where it must.
    """
    fits = {w.worker_id: w for w in workers if eligible(w, record.labels)}
    alive_ids = {w.worker_id for w in workers}
    chosen: list[str] = []
    for wid in current:
        if len(chosen) >= record.replicas or wid in chosen:
            continue
        if wid in fits or (keep_unseen and wid not in alive_ids):
            chosen.append(wid)
    zones = {fits[w].labels.get(ZONE_LABEL, "") for w in chosen if w in fits}
    candidates = [wid for wid in sorted(fits) if wid not in chosen]
    while len(chosen) < record.replicas and candidates:
        pick = min(
            candidates,
            key=lambda w: (fits[w].labels.get(ZONE_LABEL, "") in zones, load[w], w),
        )
        candidates.remove(pick)
        chosen.append(pick)
        zones.add(fits[pick].labels.get(ZONE_LABEL, ""))
        load[pick] += 1
    return chosen


class Placement:
    def __init__(
        self, deployments: KeyValue, assignments: KeyValue, registry: WorkerRegistry
    ) -> None:
        self.deployments = deployments
        self.assignments = assignments
        self.registry = registry
        self._started = time.monotonic()

    def period(self, workers: Sequence[Heartbeat]) -> float:
        """The shortest heartbeat interval of the live workers (bounded)."""
        if not workers:
            return DEFAULT_PERIOD_S
        return max(0.05, min(DEFAULT_PERIOD_S, min(w.interval_ms for w in workers) / 1000))

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the bus is down or a bucket is missing: next period
                log.warning("event=placement_failed error=%r", e)
            await asyncio.sleep(self.period(self.registry.alive()))  # placement period

    async def _read(self, kv: KeyValue) -> dict[str, bytes]:
        try:
            keys = await kv.keys()
        except NoKeysError:
            return {}
        out = {}
        for key in keys:
            try:
                entry = await kv.get(key)
            except KeyNotFoundError:
                continue
            out[key] = bytes(entry.value or b"")
        return out

    async def tick(self) -> None:
        records: dict[str, DeploymentRecord] = {}
        for key, value in (await self._read(self.deployments)).items():
            try:
                records[key] = decode(DeploymentRecord, value)
            except DecodeError as e:
                log.warning("event=skip_record key=%s error=%s", key, e)
        current: dict[str, Assignment] = {}
        for key, value in (await self._read(self.assignments)).items():
            try:
                current[key] = decode(Assignment, value)
            except DecodeError as e:
                log.warning("event=bad_assignment key=%s error=%s", key, e)
        workers = self.registry.alive()
        warming = time.monotonic() - self._started < WARMUP_S
        alive_ids = {w.worker_id for w in workers}
        load: Counter[str] = Counter()
        for plugin, a in current.items():
            record = records.get(plugin)
            if record is not None and record.replicas > 0:
                load.update(w for w in a.workers if w in alive_ids)
        for plugin in sorted(set(current) - {p for p, r in records.items() if r.replicas > 0}):
            await self.assignments.delete(plugin)
            log.info("event=unassigned plugin=%s", plugin)
        for plugin, record in sorted(records.items()):
            if record.replicas == 0:
                continue
            prev = current.get(plugin)
            before = list(prev.workers) if prev is not None else []
            load.subtract(w for w in before if w in alive_ids)
            chosen = place(record, before, workers, load, keep_unseen=warming)
            load.update(w for w in chosen if w in alive_ids and w in before)
            if prev is not None and prev.workers == chosen and prev.replicas == record.replicas:
                continue
            assignment = Assignment(plugin, chosen, record.replicas, int(time.time() * 1000))
            await self.assignments.put(plugin, encode(assignment))
            log.info(
                "event=assigned plugin=%s replicas=%d workers=%s",
                plugin,
                record.replicas,
                ",".join(chosen) or "-",
            )
