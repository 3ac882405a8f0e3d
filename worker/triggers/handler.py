"""The trigger event handler: one attempt at an event, that is, the plugin function
called on it and its output published (to the trigger's output subject and, for a
core request, to the reply subject)."""

from __future__ import annotations

import asyncio
import time

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from schemas.errors import ForgeError, PluginNotFound, Unavailable
from schemas.messages import HEADER_TRACEPARENT
from schemas.subjects import Subjects
from schemas.triggers import SourceKind, TriggerSpec

from .. import metrics
from ..executor import Executor
from ..hosted import HostedPlugin
from ..pulling import PERMANENT
from ..syscalls import SyscallBus
from ..tracing import Tracing
from .binding import Binding
from .counters import TRIGGER_ERRORS
from .dead_letter import DeadLetters
from .output import OutputPublisher, output_headers


class EventHandler:
    """Runs trigger events on the plugins hosted here; shared by every binding."""

    def __init__(
        self,
        nc: Client,
        subjects: Subjects,
        hosted: dict[str, HostedPlugin],
        executor: Executor,
        syscalls: SyscallBus,
        worker_id: str,
        tracing: Tracing | None = None,
    ) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=5)
        self.subjects = subjects
        self.hosted = hosted
        self.executor = executor
        self.syscalls = syscalls
        self.worker_id = worker_id
        self.out = OutputPublisher(nc, self.js)
        self.dead_letters = DeadLetters(self.out, subjects, worker_id)
        if tracing is not None:  # a span per attempt (off by default)
            self.attempt = tracing.trigger(self.attempt)  # type: ignore[method-assign,assignment]

    async def settle(self, b: Binding, msg: Msg, err: ForgeError | None, attempt: int) -> bool:
        """Ack a stream delivery that was handled, or dead-letter and ack one that failed
        for good (a permanent error, or its last delivery). False: worth another attempt,
        which the caller makes its own way (nak, or a retry in place for ordered keys)."""
        if err is None:
            await msg.ack()
            b.finished("ok")
            return True
        if err.code in PERMANENT or attempt >= b.spec.max_deliver:
            await self.dead_letters.send(b, msg, err, attempt)
            await msg.ack()
            b.finished("dead_lettered")
            return True
        return False

    async def attempt(self, b: Binding, msg: Msg, stream_seq: int) -> ForgeError | None:
        """Run the function on the event and publish its output; the error, or None."""
        spec = b.spec
        b.counters.events += 1
        started = time.perf_counter()
        try:
            output, version = await self.run_guest(spec, msg)
            if b.template is not None or (spec.source is SourceKind.SUBJECT and msg.reply):
                headers = output_headers(spec, msg, version, stream_seq)
                if b.template is not None:
                    msg_id = (
                        f"trigger:{spec.name}:{spec.stream}:{stream_seq}" if stream_seq else None
                    )
                    subject = b.template.render(msg.subject)
                    await self.out.publish(subject, output, headers, msg_id)
                if spec.source is SourceKind.SUBJECT and msg.reply:
                    await self.nc.publish(msg.reply, output, headers=headers)
            return None
        except ForgeError as e:
            err: ForgeError = e
        except asyncio.CancelledError:
            raise
        except Exception as e:  # publishing failed: the bus, or an output stream refusing it
            err = Unavailable(f"publishing the output failed: {type(e).__name__}: {e}")
        finally:
            b.metrics.seconds.observe(time.perf_counter() - started)
        b.counters.errors += 1
        b.counters.last_error = f"{err.code.value}: {err.message}"[:1024]
        TRIGGER_ERRORS.labels(spec.name, err.code.value).inc()
        return err

    async def run_guest(self, spec: TriggerSpec, msg: Msg) -> tuple[bytes, str]:
        """Call ``spec.fn`` on the event; its output and the version that ran it."""
        hp = self.hosted.get(spec.plugin)
        if hp is None:
            raise PluginNotFound(f"plugin {spec.plugin!r} is not hosted on this worker")
        hv = hp.pick(None)
        data = bytes(msg.data)
        hv.check(spec.fn, len(data))
        headers = dict(msg.headers or {})
        meta = hv.meta(spec.timeout_ms or None, 0, headers.get(HEADER_TRACEPARENT))
        meta.event_subject = msg.subject
        meta.event_headers = headers
        out = await hv.call(self.executor, spec.fn, data, meta)
        if out.created_instance:
            metrics.INSTANCES_CREATED.labels(spec.plugin, hv.version).inc()
        if out.discarded:
            metrics.INSTANCES_DISCARDED.labels(spec.plugin, hv.version).inc()
        if out.logs:
            await self.syscalls.logs(spec.plugin, hv.version, spec.fn, out.logs, meta.traceparent)
        if out.error is not None:
            raise out.error
        assert out.invocation is not None
        return out.invocation.output, hv.version
