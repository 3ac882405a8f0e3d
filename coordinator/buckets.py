"""The JetStream buckets and streams the control plane owns; created idempotently at start."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, ObjectStoreConfig, StorageType
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from schemas.subjects import Subjects

#: Deployment records kept per plugin (for history and rollback).
DEPLOYMENT_HISTORY = 64


async def ensure_buckets(
    js: JetStreamContext, subjects: Subjects, replicas: int = 1
) -> tuple[KeyValue, ObjectStore]:
    kv = await js.create_key_value(
        KeyValueConfig(
            bucket=subjects.deployments_bucket,
            history=DEPLOYMENT_HISTORY,
            storage=StorageType.FILE,
            replicas=replicas,
            description="ForgeOne desired deployments, one key per plugin",
        )
    )
    obj = await js.create_object_store(
        subjects.packages_bucket,
        ObjectStoreConfig(
            storage=StorageType.FILE,
            replicas=replicas,
            description="ForgeOne plugin packages by SHA-256",
        ),
    )
    return kv, obj
