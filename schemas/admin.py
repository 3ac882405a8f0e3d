"""Requests and replies of the coordinator's admin service (deploy, list, policy,
versions); the messages of the call path are in schemas/messages.py."""

from __future__ import annotations

from dataclasses import dataclass

from .codec import Message, Struct, field_spec
from .manifest import NAME_PATTERN, SHA256_PATTERN, VERSION_PATTERN
from .messages import DeploymentRecord, ErrorInfo, Heartbeat
from .policy import PolicyRecord


@dataclass(frozen=True, slots=True)
class DeployRequest(Message):
    """Deploy the package already uploaded to the packages object store under ``digest``."""

    KIND = "deploy"
    digest: str = field_spec(pattern=SHA256_PATTERN, doc="SHA-256 of the uploaded package.")
    config: dict[str, str] = field_spec(default_factory=dict, doc="Per-deployment config.")
    canary: bool = field_spec(
        default=False,
        doc="Add the version beside the deployed ones at weight 0 instead of replacing them.",
    )
    replicas: int = field_spec(
        default=0, ge=0, le=10_000, doc="Workers that should host it; 0: every worker."
    )
    labels: dict[str, str] = field_spec(
        default_factory=dict, doc="Labels a worker must carry (all of them) to host it."
    )


@dataclass(frozen=True, slots=True)
class DeployReply(Message):
    KIND = "deployed"
    record: DeploymentRecord = field_spec(doc="The record now in the deployments bucket.")
    revision: int = field_spec(default=0, ge=0, doc="KV revision of the record.")


@dataclass(frozen=True, slots=True)
class UndeployRequest(Message):
    KIND = "undeploy"
    plugin: str = field_spec(pattern=NAME_PATTERN)


@dataclass(frozen=True, slots=True)
class UndeployReply(Message):
    KIND = "undeployed"
    plugin: str = field_spec(pattern=NAME_PATTERN)


@dataclass(frozen=True, slots=True)
class ListRequest(Message):
    KIND = "list"


@dataclass(frozen=True, slots=True)
class PluginStatus(Struct):
    """A deployment and the workers that report it loaded."""

    record: DeploymentRecord = field_spec()
    ready_workers: list[str] = field_spec(default_factory=list)
    failed_workers: dict[str, str] = field_spec(default_factory=dict, doc="worker -> error.")
    wanted: int = field_spec(
        default=0, ge=0, doc="Replicas wanted: the record's, or the live workers when it is 0."
    )


@dataclass(frozen=True, slots=True)
class ListReply(Message):
    KIND = "plugins"
    plugins: list[PluginStatus] = field_spec(default_factory=list)


@dataclass(frozen=True, slots=True)
class WorkersRequest(Message):
    KIND = "workers"


@dataclass(frozen=True, slots=True)
class WorkersReply(Message):
    KIND = "workers_list"
    workers: list[Heartbeat] = field_spec(default_factory=list)


@dataclass(frozen=True, slots=True)
class ErrorReply(Message):
    """Any request that failed gets this reply instead of its usual one."""

    KIND = "error"
    error: ErrorInfo = field_spec()


POLICY_KEY_PATTERN = r"default|plugin\.[a-z][a-z0-9_-]{0,62}|key\.[0-9a-f]{16}"


@dataclass(frozen=True, slots=True)
class PolicySetRequest(Message):
    """Replace the policy record under ``key`` (default, plugin.<name> or key.<key id>)."""

    KIND = "policy_set"
    key: str = field_spec(pattern=POLICY_KEY_PATTERN)
    record: PolicyRecord = field_spec()


@dataclass(frozen=True, slots=True)
class PolicyDeleteRequest(Message):
    KIND = "policy_delete"
    key: str = field_spec(pattern=POLICY_KEY_PATTERN)


@dataclass(frozen=True, slots=True)
class PolicyListRequest(Message):
    KIND = "policy_list"


@dataclass(frozen=True, slots=True)
class PolicyListReply(Message):
    KIND = "policies"
    records: dict[str, PolicyRecord] = field_spec(default_factory=dict)


# --- versions: rollout, history, rollback ----------------------------------------------
# rollout, rollback and undeploy_version reply with DeployReply (the record now in the bucket).
@dataclass(frozen=True, slots=True)
class RolloutRequest(Message):
    """Give ``version`` ``weight`` percent of the calls; the other versions share the rest."""

    KIND = "rollout"
    plugin: str = field_spec(pattern=NAME_PATTERN)
    version: str = field_spec(pattern=VERSION_PATTERN)
    weight: int = field_spec(ge=0, le=100, doc="Percent of unpinned calls.")


@dataclass(frozen=True, slots=True)
class UndeployVersionRequest(Message):
    """Remove one version that takes no traffic (weight 0) from a plugin's deployment."""

    KIND = "undeploy_version"
    plugin: str = field_spec(pattern=NAME_PATTERN)
    version: str = field_spec(pattern=VERSION_PATTERN)


@dataclass(frozen=True, slots=True)
class HistoryRequest(Message):
    KIND = "history"
    plugin: str = field_spec(pattern=NAME_PATTERN)


@dataclass(frozen=True, slots=True)
class HistoryEntry(Struct):
    """One revision of a plugin's key in the deployments bucket."""

    revision: int = field_spec(ge=0, doc="KV revision.")
    at_ms: int = field_spec(default=0, ge=0, doc="When it was written, Unix ms.")
    record: DeploymentRecord | None = field_spec(default=None, doc="None: undeployed here.")


@dataclass(frozen=True, slots=True)
class HistoryReply(Message):
    KIND = "history_list"
    plugin: str = field_spec(pattern=NAME_PATTERN)
    entries: list[HistoryEntry] = field_spec(default_factory=list, doc="Oldest first.")


@dataclass(frozen=True, slots=True)
class RollbackRequest(Message):
    """Put an earlier record from the plugin's history again; nothing is uploaded."""

    KIND = "rollback"
    plugin: str = field_spec(pattern=NAME_PATTERN)
    to_version: str = field_spec(
        default="",
        max_len=64,
        doc="The latest record in which this version took all calls; empty: the previous one.",
    )
    revision: int = field_spec(default=0, ge=0, doc="Exactly this KV revision; 0: not fixed.")


ADMIN_REQUESTS: dict[str, type[Message]] = {
    "deploy": DeployRequest,
    "undeploy": UndeployRequest,
    "list": ListRequest,
    "workers": WorkersRequest,
    "policy_set": PolicySetRequest,
    "policy_delete": PolicyDeleteRequest,
    "policy_list": PolicyListRequest,
    "rollout": RolloutRequest,
    "history": HistoryRequest,
    "rollback": RollbackRequest,
    "undeploy_version": UndeployVersionRequest,
}

__all__ = [
    "ADMIN_REQUESTS",
    "DeployReply",
    "DeployRequest",
    "ErrorReply",
    "HistoryEntry",
    "HistoryReply",
    "HistoryRequest",
    "ListReply",
    "ListRequest",
    "PluginStatus",
    "PolicyDeleteRequest",
    "PolicyListReply",
    "PolicyListRequest",
    "PolicySetRequest",
    "RollbackRequest",
    "RolloutRequest",
    "UndeployReply",
    "UndeployRequest",
    "UndeployVersionRequest",
    "WorkersReply",
    "WorkersRequest",
]
