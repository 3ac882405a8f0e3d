"""What each of ForgeOne's NATS users may publish and subscribe to, by role.

- ``coordinator``: everything under the prefix, the JetStream API, the
  control-plane buckets, ``$SRV.>`` for the nats.micro admin service;
- ``worker``: serve invokes (queue group only), jobs and triggers, publish
  results, dead letters, syscalls, heartbeats and what plugins and trigger
  outputs may emit (``--emit``); read the control-plane buckets and the
  packages; read and write plugin KV buckets; listen on the operator's trigger
  subjects (``--trigger-subject``) and consume their streams (``--trigger-stream``);
- ``client`` (an invoking service): invoke, submit jobs, read results, read
  the deployments bucket and job statistics;
- ``publisher``: the client's rights, plus admin requests (deploy, undeploy,
  list, workers, policy), uploads to the packages store, and plugin logs;
- ``gateway`` (``forgeone gateway``): invoke the functions its routes call,
  read the deployments bucket (to tell PLUGIN_NOT_FOUND from NO_WORKERS), and
  publish on its hooks' subjects (plain or JetStream); nothing else.

The JetStream API subjects below are the ones nats-py (2.16, against
nats-server 2.15) sends for the calls each role makes; ``tests/test_auth.py``
runs every role's real traffic on a server with these permissions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from schemas.subjects import INVOKE_QUEUE, Subjects

ROLES: tuple[str, ...] = ("coordinator", "worker", "client", "publisher", "gateway")
#: Subjects plugins may emit to when ``--emit`` is not given.
DEFAULT_EMIT: tuple[str, ...] = ("events.>",)

JS_API = "$JS.API"
INBOXES = "_INBOX.>"


def _family(subject: str, keep: int) -> str:
    """The first ``keep`` tokens of a subject Subjects built, then ``>``."""
    return ".".join([*subject.split(".")[:keep], ">"])


def _kv_stream(bucket: str) -> str:
    return f"KV_{bucket}"


def _obj_stream(bucket: str) -> str:
    return f"OBJ_{bucket}"


def _kv_keys(bucket: str) -> str:
    return f"$KV.{bucket}.>"


def _obj_all(bucket: str) -> str:
    return f"$O.{bucket}.>"


def _stream_info(stream: str) -> str:
    return f"{JS_API}.STREAM.INFO.{stream}"


def _msg_get(stream: str) -> list[str]:
    """Reading one message (last by subject, or by sequence): stored or direct get."""
    return [
        f"{JS_API}.STREAM.MSG.GET.{stream}",
        f"{JS_API}.DIRECT.GET.{stream}",
        f"{JS_API}.DIRECT.GET.{stream}.>",
    ]


def _ordered_consumer(stream: str) -> list[str]:
    """A KV watch or an object read: an ephemeral ordered consumer with flow control.

    nats-py creates it with ``CONSUMER.CREATE.<stream>`` and asks for its info;
    the named form (``CONSUMER.CREATE.<stream>.<name>[.<filter>]``, used by other
    clients and newer nats-py) is the same right on the same stream.
    """
    return [
        f"{JS_API}.CONSUMER.CREATE.{stream}",
        f"{JS_API}.CONSUMER.CREATE.{stream}.>",
        f"{JS_API}.CONSUMER.INFO.{stream}.*",
        f"$JS.FC.{stream}.>",
    ]


def control_buckets(subjects: Subjects) -> list[str]:
    """Every bucket Subjects names (deployments, policy, packages, and any added later).

    Only the coordinator writes these; found by name so that a new
    ``*_bucket`` property is denied to the other roles without a change here.
    """
    names = [
        n for n, v in vars(Subjects).items() if n.endswith("_bucket") and isinstance(v, property)
    ]
    return sorted({str(getattr(subjects, n)) for n in names})


@dataclass(frozen=True, slots=True)
class RolePermissions:
    """One NATS user's ``permissions`` block."""

    publish_allow: tuple[str, ...]
    subscribe_allow: tuple[str, ...]
    publish_deny: tuple[str, ...] = ()
    subscribe_deny: tuple[str, ...] = ()
    allow_responses: bool = False
    """May publish one reply to each request it receives (and nothing else on _INBOX)."""


def uniq(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


@dataclass(frozen=True, slots=True)
class GatewayScope:
    """What ``forgeone gateway`` reaches on the bus: the functions its invoke routes
    call and the subjects its hooks publish on."""

    invoke: tuple[tuple[str, str], ...] = (("*", "*"),)
    """(plugin, function) pairs the gateway may invoke; ``*`` stands for any."""
    hooks: tuple[str, ...] = ()
    """Subjects (or patterns) the gateway's hooks publish on."""


#: The gateway's reach when nothing narrows it: invoke any plugin, publish no hook.
DEFAULT_GATEWAY = GatewayScope()


def role_permissions(
    subjects: Subjects,
    emit: Sequence[str] = DEFAULT_EMIT,
    trigger_subjects: Sequence[str] = (),
    trigger_streams: Sequence[str] = (),
    gateway: GatewayScope = DEFAULT_GATEWAY,
) -> dict[str, RolePermissions]:
    """The permissions of each role's user, by role name.

    ``emit``: subjects plugins (``forge.emit``) and trigger outputs may be published
    to. ``trigger_subjects``: subjects subject-triggers may listen on (in a queue
    group). ``trigger_streams``: the users' streams stream-triggers may consume.
    ``gateway``: what the HTTP gateway's routes reach.
    """
    s = subjects
    everything = _family(s.admin("x"), 1)  # <prefix>.>
    invoke_all = _family(s.invoke("x", "y"), 2)  # <prefix>.invoke.>
    admin_all = _family(s.admin("x"), 2)  # <prefix>.admin.>
    deployments, packages = s.deployments_bucket, s.packages_bucket
    control_kv_buckets = [b for b in control_buckets(s) if b != packages]
    jobs, results, dlq = s.jobs_stream, s.results_stream, s.dead_letter_stream

    # What only the coordinator may do, denied explicitly to the others (deny beats
    # allow), so that a broadened allow list cannot silently reopen it.
    control_kv = tuple(_kv_keys(b) for b in control_buckets(s))
    stream_admin = (
        *(f"{JS_API}.STREAM.{op}.>" for op in ("CREATE", "UPDATE", "DELETE")),
        f"{JS_API}.STREAM.MSG.DELETE.>",
    )
    purge_any = f"{JS_API}.STREAM.PURGE.>"

    coordinator = RolePermissions(
        publish_allow=(
            everything,
            f"{JS_API}.>",
            "$JS.ACK.>",
            "$JS.FC.>",
            *(_kv_keys(b) for b in control_kv_buckets),
            _obj_all(packages),
            "$SRV.>",
        ),
        subscribe_allow=(everything, "$SRV.>", INBOXES),
        allow_responses=True,
    )

    worker = RolePermissions(
        publish_allow=(
            # nested calls (``call:<plugin>`` host calls)
            invoke_all,
            # jobs: pull from the shared consumers, ack, store results and dead letters
            f"{JS_API}.CONSUMER.INFO.{jobs}.*",
            f"{JS_API}.CONSUMER.MSG.NEXT.{jobs}.*",
            f"$JS.ACK.{jobs}.>",
            s.results_all(),
            s.dead_letter_all(),
            # the cluster view, syscalls, and what plugins and trigger outputs may emit
            s.heartbeat_all(),
            s.syscall_all(),
            *emit,
            # triggers: statistics, dead letters, and the consumers on the users' streams
            # (an output goes through JetStream when a stream stores its subject, which
            # the worker finds in the list of streams)
            s.trigger_stats_all(),
            s.trigger_dead_letter_all(),
            f"{JS_API}.STREAM.LIST",
            *(
                subject
                for stream in trigger_streams
                for subject in (
                    f"{JS_API}.CONSUMER.INFO.{stream}.*",
                    f"{JS_API}.CONSUMER.MSG.NEXT.{stream}.*",
                    f"$JS.ACK.{stream}.>",
                )
            ),
            # watch the control-plane buckets (deployments, policy, and any added
            # later), read packages (the object store's get finds its stream by subject)
            *(c for b in control_kv_buckets for c in _ordered_consumer(_kv_stream(b))),
            *_ordered_consumer(_obj_stream(packages)),
            f"{JS_API}.STREAM.NAMES",
            # plugin KV buckets (<prefix>_kv_<name>) and reading any stream's info and
            # messages (buckets, packages, results): a subject wildcard cannot match part
            # of a token, so every bucket is allowed and the control-plane ones denied
            "$KV.>",
            f"{JS_API}.STREAM.INFO.*",
            f"{JS_API}.STREAM.MSG.GET.*",
            f"{JS_API}.DIRECT.GET.*",
            f"{JS_API}.DIRECT.GET.*.>",
        ),
        publish_deny=(admin_all, *control_kv, *stream_admin, purge_any, "$O.>"),
        subscribe_allow=(
            f"{invoke_all} {INVOKE_QUEUE}",
            # subject triggers: always in the trigger's queue group (any group name)
            *(f"{subject} *" for subject in trigger_subjects),
            INBOXES,
        ),
        allow_responses=True,
    )

    client_allow = [
        invoke_all,
        s.jobs_all(),
        # PLUGIN_NOT_FOUND vs NO_WORKERS: one key of the deployments bucket
        _stream_info(_kv_stream(deployments)),
        *_msg_get(_kv_stream(deployments)),
        # job results
        *_msg_get(results),
        # job statistics
        f"{JS_API}.CONSUMER.LIST.{jobs}",
        _stream_info(dlq),
    ]
    client = RolePermissions(
        publish_allow=uniq(client_allow),
        publish_deny=(admin_all, *control_kv, *stream_admin, purge_any, "$O.>"),
        subscribe_allow=(s.results_all(), INBOXES),
    )

    publisher = RolePermissions(
        publish_allow=uniq(
            [
                *client_allow,
                admin_all,
                # uploads: ObjectStore.put (chunks, then the meta message; a re-upload
                # purges the chunks it replaces)
                _stream_info(_obj_stream(packages)),
                *_msg_get(_obj_stream(packages)),
                _obj_all(packages),
                f"{JS_API}.STREAM.PURGE.{_obj_stream(packages)}",
                # plugin logs (``forgeone logs``): an ordered consumer on the logs stream,
                # and the stream's info (how many lines it holds)
                *_ordered_consumer(s.logs_stream),
                _stream_info(s.logs_stream),
            ]
        ),
        publish_deny=(*control_kv, *stream_admin),
        subscribe_allow=(s.results_all(), INBOXES),
    )

    # the HTTP gateway: requests on the functions its invoke routes call (a reply comes
    # to its inbox), one key of the deployments bucket when nobody answers (as the
    # client), and its hooks' subjects (a JetStream hook is a publish acked to _INBOX)
    invoke_base = _family(s.invoke("x", "y"), 2).removesuffix(".>")  # <prefix>.invoke
    gateway_allow = [f"{invoke_base}.{plugin}.{fn}" for plugin, fn in gateway.invoke]
    if gateway_allow:
        gateway_allow += [_stream_info(_kv_stream(deployments)), *_msg_get(_kv_stream(deployments))]
    gateway_role = RolePermissions(
        publish_allow=uniq([*gateway_allow, *gateway.hooks]),
        publish_deny=(
            admin_all,
            s.jobs_all(),
            *control_kv,
            *stream_admin,
            purge_any,
            "$O.>",
        ),
        subscribe_allow=(INBOXES,),
    )
    return {
        "coordinator": coordinator,
        "worker": worker,
        "client": client,
        "publisher": publisher,
        "gateway": gateway_role,
    }
