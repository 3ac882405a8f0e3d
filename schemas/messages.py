"""Every typed message of the call path (calls, jobs, deployments, heartbeats, logs);
the admin service's requests and replies are in schemas/admin.py."""

from __future__ import annotations

from dataclasses import dataclass

from .codec import Message, Struct, field_spec
from .errors import ErrorCode, ForgeError, error_for
from .manifest import NAME_PATTERN, SHA256_PATTERN, VERSION_PATTERN, Manifest

WORKER_ID_PATTERN = r"[A-Za-z0-9_-]{1,128}"

# --- request headers every path honours ------------------------------------
#: Milliseconds the caller will wait, counted from when the worker receives the call.
HEADER_TIMEOUT_MS = "Forge-Timeout-Ms"
#: Optional version pin.
HEADER_VERSION = "Forge-Version"
#: W3C trace context.
HEADER_TRACEPARENT = "traceparent"
#: How many plugin-to-plugin ``call``s deep this request is (absent: 0).
HEADER_DEPTH = "Forge-Depth"
#: Most nested ``call`` depth; deeper calls are DENIED so calls cannot deadlock pools.
MAX_CALL_DEPTH = 4


@dataclass(frozen=True, slots=True)
class ErrorInfo(Struct):
    """A typed failure: the code says what kind, the message says what exactly."""

    code: ErrorCode = field_spec(doc="One of the ErrorCode values.")
    message: str = field_spec(default="", max_len=8192, doc="Human-readable detail.")

    def to_exception(self) -> ForgeError:
        return error_for(self.code, self.message)

    @staticmethod
    def of(err: ForgeError) -> ErrorInfo:
        return ErrorInfo(err.code, err.message[:8192])


# --- calls -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class InvokeRequest(Message):
    """A fast call: the body of a request on ``<prefix>.invoke.<plugin>.<fn>``."""

    KIND = "invoke"
    input: bytes = field_spec(default=b"", doc="The bytes handed to the guest function.")


@dataclass(frozen=True, slots=True)
class CallResult(Message):
    """The outcome of one call: output on success, a typed error otherwise."""

    KIND = "result"
    ok: bool = field_spec(doc="True when the guest returned normally.")
    output: bytes = field_spec(default=b"", doc="The guest's output (empty on error).")
    error: ErrorInfo | None = field_spec(default=None, doc="Set when ok is false.")
    plugin: str = field_spec(default="", max_len=64, doc="Plugin that served the call.")
    fn: str = field_spec(default="", max_len=64, doc="Function called.")
    version: str = field_spec(default="", max_len=64, doc="Plugin version that served it.")
    worker: str = field_spec(default="", max_len=128, doc="Worker id that served it.")
    duration_us: int = field_spec(default=0, ge=0, doc="Time inside the guest, microseconds.")
    fuel_used: int | None = field_spec(default=None, ge=0, doc="Fuel consumed, when metered.")

    @staticmethod
    def failure(err: ForgeError, **kw: str) -> CallResult:
        return CallResult(ok=False, error=ErrorInfo.of(err), **kw)  # type: ignore[arg-type]


# --- durable jobs ---------------------------------------------------------------
#: JetStream's de-duplication header; a job's id, so a resubmitted job is stored once.
HEADER_MSG_ID = "Nats-Msg-Id"
JOB_ID_PATTERN = r"[A-Za-z0-9_-]{1,128}"


@dataclass(frozen=True, slots=True)
class JobRequest(Message):
    """A durable call, stored on ``<prefix>.jobs.<plugin>.<fn>`` with its id as message id."""

    KIND = "job"
    job_id: str = field_spec(pattern=JOB_ID_PATTERN, doc="Caller-chosen or generated id.")
    input: bytes = field_spec(default=b"", doc="The bytes handed to the guest function.")
    deadline_ms: int = field_spec(
        default=0, ge=0, doc="Unix ms after which it must not run; 0 none."
    )
    submitted_at_ms: int = field_spec(default=0, ge=0, doc="Unix ms when submitted.")
    version: str = field_spec(default="", max_len=64, doc="Optional version pin.")


@dataclass(frozen=True, slots=True)
class JobResult(Message):
    """The one stored outcome of a job, on ``<prefix>.results.<job_id>``."""

    KIND = "job_result"
    job_id: str = field_spec(pattern=JOB_ID_PATTERN)
    result: CallResult = field_spec(doc="What the call produced (or its typed error).")
    attempts: int = field_spec(default=1, ge=0, doc="Deliveries it took.")
    finished_at_ms: int = field_spec(default=0, ge=0)


@dataclass(frozen=True, slots=True)
class DeadLetter(Message):
    """A job that failed every delivery (or failed permanently), with its last error."""

    KIND = "dead_letter"
    job: JobRequest = field_spec()
    plugin: str = field_spec(max_len=64)
    fn: str = field_spec(max_len=64)
    error: ErrorInfo = field_spec()
    attempts: int = field_spec(default=0, ge=0)
    worker: str = field_spec(default="", max_len=128)
    at_ms: int = field_spec(default=0, ge=0)


# --- deployments ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class VersionEntry(Struct):
    """One deployed version of a plugin and its share of the traffic."""

    version: str = field_spec(pattern=VERSION_PATTERN, doc="Plugin version.")
    digest: str = field_spec(pattern=SHA256_PATTERN, doc="Package SHA-256 (object store name).")
    manifest: Manifest = field_spec(doc="The verified manifest of that package.")
    weight: int = field_spec(default=100, ge=0, le=100, doc="Share of calls, percent.")
    key_id: str = field_spec(default="", max_len=16, doc="Key that signed the package.")


@dataclass(frozen=True, slots=True)
class DeploymentRecord(Message):
    """The desired state of one plugin: the value of its key in the deployments bucket."""

    KIND = "deployment"
    plugin: str = field_spec(pattern=NAME_PATTERN, doc="Plugin name (the KV key).")
    versions: list[VersionEntry] = field_spec(default_factory=list, doc="Active versions.")
    config: dict[str, str] = field_spec(default_factory=dict, doc="Per-deployment config.")
    deployed_at_ms: int = field_spec(default=0, ge=0, doc="Unix time of this record, ms.")
    replicas: int = field_spec(
        default=0, ge=0, le=10_000, doc="Workers that should host it; 0: every worker."
    )
    labels: dict[str, str] = field_spec(
        default_factory=dict, doc="Labels a worker must carry (all of them) to host it."
    )

    def __post_init__(self) -> None:
        if not self.versions:
            raise ValueError("versions: a deployment needs at least one version")
        if len({v.version for v in self.versions}) != len(self.versions):
            raise ValueError("versions: a version appears twice")

    def active(self) -> VersionEntry:
        """The version with the most weight (the one taking calls by default)."""
        return max(self.versions, key=lambda v: v.weight)


@dataclass(frozen=True, slots=True)
class Assignment(Message):
    """Which workers host a plugin deployed with replicas > 0: its key in the assignments bucket.

    Written by the coordinator's placement loop; workers read it, so a stopped coordinator
    leaves every worker with what it holds.
    """

    KIND = "assignment"
    plugin: str = field_spec(pattern=NAME_PATTERN, doc="Plugin name (the KV key).")
    workers: list[str] = field_spec(default_factory=list, doc="Worker ids that should host it.")
    replicas: int = field_spec(default=0, ge=0, doc="Replicas wanted when it was written.")
    at_ms: int = field_spec(default=0, ge=0, doc="Unix time of this assignment, ms.")


# --- cluster view ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LoadedPlugin(Struct):
    plugin: str = field_spec(max_len=64)
    version: str = field_spec(max_len=64)
    digest: str = field_spec(max_len=64)
    state: str = field_spec(default="ready", max_len=32, doc="loading, ready or failed.")
    error: str = field_spec(default="", max_len=2048, doc="Why it failed, if it did.")
    pool_idle: int = field_spec(default=0, ge=0)
    pool_busy: int = field_spec(default=0, ge=0)
    calls_total: int = field_spec(default=0, ge=0, doc="Calls this version finished here.")
    errors_total: int = field_spec(default=0, ge=0, doc="Of those, the ones that failed.")
    p50_us: int = field_spec(default=0, ge=0, doc="Median call time over recent calls.")
    p99_us: int = field_spec(default=0, ge=0, doc="99th percentile over recent calls.")


@dataclass(frozen=True, slots=True)
class Heartbeat(Message):
    """A worker's periodic announcement on ``<prefix>.heartbeat.<worker_id>``."""

    KIND = "heartbeat"
    worker_id: str = field_spec(pattern=WORKER_ID_PATTERN)
    host: str = field_spec(default="", max_len=256)
    pid: int = field_spec(default=0, ge=0)
    software_version: str = field_spec(default="", max_len=64)
    started_at_ms: int = field_spec(default=0, ge=0)
    sent_at_ms: int = field_spec(default=0, ge=0)
    interval_ms: int = field_spec(default=2000, ge=1, doc="Time until the next heartbeat.")
    slots_total: int = field_spec(default=0, ge=0, doc="Execution slots (threads).")
    slots_busy: int = field_spec(default=0, ge=0)
    calls_total: int = field_spec(default=0, ge=0)
    errors_total: int = field_spec(default=0, ge=0)
    rss_bytes: int = field_spec(default=0, ge=0)
    labels: dict[str, str] = field_spec(default_factory=dict)
    plugins: list[LoadedPlugin] = field_spec(default_factory=list)
    stopping: bool = field_spec(default=False, doc="Last heartbeat of a worker shutting down.")
    memory_budget_bytes: int = field_spec(
        default=0, ge=0, doc="Plugin memory placement may assign here, bytes; 0: unlimited."
    )
    calls_per_s: float = field_spec(
        default=0.0,
        doc="Calls per second since the previous heartbeat; set by the coordinator, "
        "workers send 0.",
    )


# --- syscalls ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LogEvent(Message):
    """A guest log line, published on ``<prefix>.syscall.<plugin>.log``."""

    KIND = "log"
    plugin: str = field_spec(max_len=64)
    version: str = field_spec(default="", max_len=64)
    fn: str = field_spec(default="", max_len=64)
    worker: str = field_spec(default="", max_len=128)
    level: int = field_spec(default=1, ge=0, le=3, doc="0 debug, 1 info, 2 warn, 3 error.")
    message: str = field_spec(default="", max_len=16384)
    at_ms: int = field_spec(default=0, ge=0)
    traceparent: str = field_spec(default="", max_len=128, doc="W3C trace context of the call.")


__all__ = [
    "HEADER_DEPTH",
    "HEADER_MSG_ID",
    "HEADER_TIMEOUT_MS",
    "HEADER_TRACEPARENT",
    "HEADER_VERSION",
    "MAX_CALL_DEPTH",
    "Assignment",
    "CallResult",
    "DeadLetter",
    "DeploymentRecord",
    "ErrorInfo",
    "Heartbeat",
    "InvokeRequest",
    "JobRequest",
    "JobResult",
    "LoadedPlugin",
    "LogEvent",
    "VersionEntry",
]
