"""How host functions, running on guest threads, reach NATS on the worker's event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from nats.aio.client import Client
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from schemas.codec import decode, encode
from schemas.messages import (
    HEADER_DEPTH,
    HEADER_TIMEOUT_MS,
    HEADER_TRACEPARENT,
    CallResult,
    InvokeRequest,
)
from schemas.subjects import Subjects

from .slots import released

T = TypeVar("T")


class HostBridge:
    """How host functions, on guest threads, reach NATS on the worker's event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, nc: Client, subjects: Subjects) -> None:
        self.loop = loop
        self.nc = nc
        self.subjects = subjects
        self._buckets: dict[str, KeyValue] = {}
        self._loop_thread = threading.get_ident()  # built on the loop's thread

    def _wait(self, coro: Coroutine[Any, Any, T], timeout_s: float) -> T:
        if threading.get_ident() == self._loop_thread:
            coro.close()  # waiting here would block the very loop the answer needs
            raise RuntimeError("a bus host call cannot wait on the event loop thread")
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        with released():  # waiting on the bus is not CPU work
            try:
                return fut.result(timeout=max(0.0, timeout_s))
            except TimeoutError:
                fut.cancel()
                raise

    def publish(self, subject: str, data: bytes, headers: dict[str, str] | None) -> None:
        """Fire and forget: schedule the publish and return at once."""
        asyncio.run_coroutine_threadsafe(self.nc.publish(subject, data, headers=headers), self.loop)

    async def _bucket(self, name: str) -> KeyValue:
        kv = self._buckets.get(name)
        if kv is None:
            kv = await self.nc.jetstream().key_value(self.subjects.kv_bucket(name))
            self._buckets[name] = kv
        return kv

    def kv_get(self, bucket: str, key: str, timeout_s: float) -> bytes | None:
        async def get() -> bytes | None:
            try:
                entry = await (await self._bucket(bucket)).get(key)
            except NotFoundError:
                return None
            return entry.value

        return self._wait(get(), timeout_s)

    def kv_put(self, bucket: str, key: str, value: bytes, timeout_s: float) -> None:
        async def put() -> None:
            await (await self._bucket(bucket)).put(key, value)

        self._wait(put(), timeout_s)

    def call(
        self,
        plugin: str,
        fn: str,
        data: bytes,
        timeout_s: float,
        depth: int,
        traceparent: str | None,
    ) -> CallResult:
        headers = {HEADER_TIMEOUT_MS: str(max(1, int(timeout_s * 1000))), HEADER_DEPTH: str(depth)}
        if traceparent:
            headers[HEADER_TRACEPARENT] = traceparent
        msg = self._wait(
            self.nc.request(
                self.subjects.invoke(plugin, fn),
                encode(InvokeRequest(data)),
                timeout=timeout_s,
                headers=headers,
            ),
            timeout_s,
        )
        return decode(CallResult, msg.data)
