"""The client side of trigger administration: what ``ForgeClient``'s trigger methods
delegate to (typed requests to the admin service, coordinator/triggers_admin.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from schemas.codec import Message
from schemas.triggers import (
    TriggerAddRequest,
    TriggerListReply,
    TriggerListRequest,
    TriggerPauseRequest,
    TriggerRemoved,
    TriggerRemoveRequest,
    TriggerReply,
    TriggerResumeRequest,
    TriggerShowRequest,
    TriggerSpec,
    TriggerStatus,
)

AdminCall = Callable[[str, Message, type[Message]], Awaitable[Message]]


class TriggerClient:
    """What ``ForgeClient``'s trigger methods delegate to (typed admin requests)."""

    def __init__(self, admin: AdminCall) -> None:
        self._admin = admin

    async def add(self, spec: TriggerSpec) -> TriggerReply:
        reply = await self._admin("trigger_add", TriggerAddRequest(spec), TriggerReply)
        assert isinstance(reply, TriggerReply)
        return reply

    async def list(self) -> list[TriggerStatus]:
        reply = await self._admin("trigger_list", TriggerListRequest(), TriggerListReply)
        assert isinstance(reply, TriggerListReply)
        return reply.triggers

    async def _status(self, op: str, req: Message) -> TriggerStatus:
        reply = await self._admin(op, req, TriggerReply)
        assert isinstance(reply, TriggerReply)
        return reply.status

    async def show(self, name: str) -> TriggerStatus:
        return await self._status("trigger_show", TriggerShowRequest(name))

    async def pause(self, name: str) -> TriggerStatus:
        return await self._status("trigger_pause", TriggerPauseRequest(name))

    async def resume(self, name: str) -> TriggerStatus:
        return await self._status("trigger_resume", TriggerResumeRequest(name))

    async def remove(self, name: str) -> None:
        await self._admin("trigger_rm", TriggerRemoveRequest(name), TriggerRemoved)
