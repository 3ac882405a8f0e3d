"""The JetStream buckets, streams and consumers the control plane owns, created idempotently."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from schemas.subjects import Subjects

from .settings import JobSettings

#: Deployment records kept per plugin (for history and rollback).
DEPLOYMENT_HISTORY = 64
#: Plugin logs kept: per plugin, in all, and for how long.
LOG_LINES_PER_PLUGIN = 10_000
LOG_MAX_BYTES = 256 * 1024 * 1024
LOG_MAX_AGE_S = 7 * 24 * 3600.0


async def ensure_buckets(
    js: JetStreamContext, subjects: Subjects, replicas: int = 1
) -> tuple[KeyValue, ObjectStore, KeyValue]:
    kv = await _kv_bucket(
        js,
        subjects.deployments_bucket,
        DEPLOYMENT_HISTORY,
        replicas,
        "ForgeOne desired deployments, one key per plugin",
    )
    obj = await js.create_object_store(
        subjects.packages_bucket,
        ObjectStoreConfig(
            storage=StorageType.FILE,
            replicas=replicas,
            description="ForgeOne plugin packages by SHA-256",
        ),
    )
    policy = await _kv_bucket(
        js,
        subjects.policy_bucket,
        16,
        replicas,
        "ForgeOne permission policy: default, plugin.<name>, key.<key id>",
    )
    await ensure_assignments(js, subjects, replicas)
    await _put_stream(
        js,
        StreamConfig(
            name=subjects.logs_stream,
            subjects=[subjects.syscall_logs()],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=replicas,
            max_msgs_per_subject=LOG_LINES_PER_PLUGIN,
            max_age=LOG_MAX_AGE_S,
            max_bytes=LOG_MAX_BYTES,
            discard=DiscardPolicy.OLD,
            description="ForgeOne plugin logs, bounded per plugin",
        ),
    )
    return kv, obj, policy


async def ensure_assignments(
    js: JetStreamContext, subjects: Subjects, replicas: int = 1
) -> KeyValue:
    """Placement: one key per plugin deployed with replicas > 0 (coordinator/placement.py)."""
    return await _kv_bucket(
        js,
        subjects.assignments_bucket,
        8,
        replicas,
        "ForgeOne placement: the workers that host each plugin with replicas",
    )


async def ensure_plugin_kv(
    js: JetStreamContext, subjects: Subjects, name: str, replicas: int = 1
) -> None:
    """The KV bucket behind a ``kv:<name>`` grant."""
    await _kv_bucket(
        js, subjects.kv_bucket(name), 1, replicas, f"ForgeOne plugin state bucket {name}"
    )


async def _kv_bucket(
    js: JetStreamContext, bucket: str, history: int, replicas: int, description: str
) -> KeyValue:
    """A file-backed KV bucket (created, or bound if it exists with these settings)."""
    return await js.create_key_value(
        KeyValueConfig(
            bucket=bucket,
            history=history,
            storage=StorageType.FILE,
            replicas=replicas,
            description=description,
        )
    )


async def _put_stream(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except BadRequestError:  # exists with other settings: bring it in line
        await js.update_stream(config)


async def ensure_job_streams(
    js: JetStreamContext, subjects: Subjects, jobs: JobSettings, replicas: int = 1
) -> None:
    """Work queue for jobs, first-result-wins results, and the dead-letter stream."""
    await _put_stream(
        js,
        StreamConfig(
            name=subjects.jobs_stream,
            subjects=[subjects.jobs_all()],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=replicas,
            duplicate_window=jobs.dedupe_window_s,
            description="ForgeOne durable jobs, one subject per plugin function",
        ),
    )
    await _put_stream(
        js,
        StreamConfig(
            name=subjects.results_stream,
            subjects=[subjects.results_all()],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=replicas,
            max_age=jobs.results_max_age_s,
            max_msgs_per_subject=1,
            discard=DiscardPolicy.NEW,
            discard_new_per_subject=True,
            duplicate_window=min(jobs.dedupe_window_s, jobs.results_max_age_s),
            allow_direct=True,
            description="ForgeOne job results, one per job id; the first stored wins",
        ),
    )
    await _put_stream(
        js,
        StreamConfig(
            name=subjects.dead_letter_stream,
            subjects=[subjects.dead_letter_all()],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=replicas,
            max_age=jobs.dead_letter_max_age_s,
            duplicate_window=jobs.dedupe_window_s,
            description="ForgeOne jobs that failed every delivery, with their last error",
        ),
    )


async def ensure_jobs_consumer(
    js: JetStreamContext, subjects: Subjects, plugin: str, jobs: JobSettings, replicas: int = 1
) -> None:
    """The durable pull consumer all workers hosting ``plugin`` share."""
    config = ConsumerConfig(
        durable_name=subjects.jobs_consumer(plugin),
        filter_subject=subjects.jobs_plugin(plugin),
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=jobs.ack_wait_s,
        max_deliver=jobs.max_deliver,
        max_ack_pending=20_000,
        max_waiting=512,
        num_replicas=replicas,
        description=f"ForgeOne jobs of plugin {plugin}",
    )
    await js.add_consumer(subjects.jobs_stream, config)


#: Dead-lettered trigger events kept (on the triggers' default dead-letter subjects).
TRIGGER_DEAD_LETTER_MAX_AGE_S = 7 * 24 * 3600.0


async def ensure_triggers(js: JetStreamContext, subjects: Subjects, replicas: int = 1) -> KeyValue:
    """The triggers bucket (one key per trigger) and the default dead-letter stream."""
    kv = await _kv_bucket(
        js, subjects.triggers_bucket, 16, replicas, "ForgeOne triggers, one key per trigger"
    )
    await _put_stream(
        js,
        StreamConfig(
            name=subjects.trigger_dead_letter_stream,
            subjects=[subjects.trigger_dead_letter_all()],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=replicas,
            max_age=TRIGGER_DEAD_LETTER_MAX_AGE_S,
            duplicate_window=120.0,
            description="ForgeOne trigger events that failed every attempt, with their error",
        ),
    )
    return kv


async def bucket_keys(kv: KeyValue) -> list[str]:
    """The keys of a KV bucket that hold a value or a delete marker, sorted.

    nats-py's ``KeyValue.keys()`` watches the bucket and can take its end marker
    before values already on their way (an empty list for a full bucket). The
    stream's per-subject state, asked for in one request, has no such race. A deleted
    key keeps its delete marker, so callers ``get`` each key and skip those that raise
    ``NotFoundError`` (nats-py raises ``KeyNotFoundError`` for a deleted key).
    """
    prefix = f"$KV.{kv._name}."  # (KeyValue keeps its bucket and stream names private)
    info = await kv._js.stream_info(kv._stream, subjects_filter=f"{prefix}>")
    return sorted(s[len(prefix) :] for s in (info.state.subjects or {}))
