"""JSON Schema documents for the wire messages, generated from the Python types.

The documents under ``schemas/json/`` are committed for clients in other
languages; a test checks they equal what this module generates, so the two
cannot drift. MessagePack ``bin`` fields appear as strings with
``contentEncoding: base64`` (their JSON rendering).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from pathlib import Path
from typing import Any, get_args, get_origin

from .admin import (
    DeployReply,
    DeployRequest,
    ErrorReply,
    HistoryReply,
    HistoryRequest,
    ListReply,
    ListRequest,
    PolicyDeleteRequest,
    PolicyListReply,
    PolicyListRequest,
    PolicySetRequest,
    RollbackRequest,
    RolloutRequest,
    UndeployReply,
    UndeployRequest,
    UndeployVersionRequest,
    WorkersReply,
    WorkersRequest,
)
from .codec import DEFAULT_MAX_STR, Message, Struct, hints
from .manifest import Manifest
from .messages import (
    Assignment,
    CallResult,
    DeadLetter,
    DeploymentRecord,
    Heartbeat,
    InvokeRequest,
    JobRequest,
    JobResult,
    LogEvent,
)
from .policy import PolicyRecord
from .triggers import (
    TriggerAddRequest,
    TriggerDeadLetter,
    TriggerListReply,
    TriggerListRequest,
    TriggerPauseRequest,
    TriggerRemoved,
    TriggerRemoveRequest,
    TriggerReply,
    TriggerResumeRequest,
    TriggerShowRequest,
    TriggerSpec,
    TriggerStats,
)

JSON_DIR = Path(__file__).parent / "json"
DOCUMENTED: tuple[type[Struct], ...] = (
    Assignment,
    Manifest,
    InvokeRequest,
    CallResult,
    JobRequest,
    JobResult,
    DeadLetter,
    DeploymentRecord,
    Heartbeat,
    LogEvent,
    DeployRequest,
    DeployReply,
    UndeployRequest,
    UndeployReply,
    ListRequest,
    ListReply,
    WorkersRequest,
    WorkersReply,
    ErrorReply,
    PolicyRecord,
    PolicySetRequest,
    PolicyDeleteRequest,
    PolicyListRequest,
    PolicyListReply,
    RolloutRequest,
    UndeployVersionRequest,
    HistoryRequest,
    HistoryReply,
    RollbackRequest,
    TriggerSpec,
    TriggerStats,
    TriggerDeadLetter,
    TriggerAddRequest,
    TriggerListRequest,
    TriggerShowRequest,
    TriggerPauseRequest,
    TriggerResumeRequest,
    TriggerRemoveRequest,
    TriggerReply,
    TriggerListReply,
    TriggerRemoved,
)


def _type_schema(tp: Any, meta: typing.Mapping[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    origin = get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        inner = [a for a in get_args(tp) if a is not type(None)]
        return {"anyOf": [_type_schema(inner[0], meta, defs), {"type": "null"}]}
    if tp is str:
        out: dict[str, Any] = {"type": "string", "maxLength": meta.get("max_len", DEFAULT_MAX_STR)}
        if "pattern" in meta:
            out["pattern"] = f"^(?:{meta['pattern'].pattern})$"
        return out
    if tp is bytes:
        return {"type": "string", "contentEncoding": "base64"}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        out = {"type": "integer"}
        if "ge" in meta:
            out["minimum"] = meta["ge"]
        if "le" in meta:
            out["maximum"] = meta["le"]
        return out
    if tp is float:
        return {"type": "number"}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"type": "string", "enum": [e.value for e in tp]}
    if origin is list:
        item_meta = {"pattern": meta["item_pattern"]} if "item_pattern" in meta else {}
        items = _type_schema(get_args(tp)[0], item_meta, defs)
        if meta.get("exclude"):
            items["not"] = {"enum": sorted(meta["exclude"])}
        out = {"type": "array", "items": items}
        if "min_items" in meta:
            out["minItems"] = meta["min_items"]
        if meta.get("unique"):
            out["uniqueItems"] = True
        return out
    if origin is dict:
        return {"type": "object", "additionalProperties": _type_schema(get_args(tp)[1], {}, defs)}
    if isinstance(tp, type) and issubclass(tp, Struct):
        if tp.__name__ not in defs:
            defs[tp.__name__] = {}
            defs[tp.__name__] = _struct_schema(tp, defs)
        return {"$ref": f"#/$defs/{tp.__name__}"}
    raise TypeError(f"no JSON Schema for {tp!r}")


def _struct_schema(cls: type[Struct], defs: dict[str, Any]) -> dict[str, Any]:
    props: dict[str, Any] = {}
    required: list[str] = []
    if issubclass(cls, Message):
        props["kind"] = {"const": cls.KIND}
        required.append("kind")
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        schema = _type_schema(hints(cls)[f.name], f.metadata, defs)
        if f.metadata.get("doc"):
            schema = {**schema, "description": f.metadata["doc"]}
        props[f.name] = schema
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(f.name)
    return {"type": "object", "properties": props, "required": required}


def json_schema(cls: type[Struct]) -> dict[str, Any]:
    """The JSON Schema document for one message type."""
    defs: dict[str, Any] = {}
    body = _struct_schema(cls, defs)
    doc: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"forgeone/{cls.__name__}.schema.json",
        "title": cls.__name__,
        "description": (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else "",
        **body,
    }
    if defs:
        doc["$defs"] = dict(sorted(defs.items()))
    return doc


def render_all() -> dict[str, str]:
    """File name -> document text for every documented message."""
    return {
        f"{cls.__name__}.schema.json": json.dumps(json_schema(cls), indent=2, sort_keys=True) + "\n"
        for cls in DOCUMENTED
    }


def write_all(out: Path = JSON_DIR) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in render_all().items():
        p = out / name
        p.write_text(text)
        paths.append(p)
    return paths


if __name__ == "__main__":
    for p in write_all():
        print(p)
