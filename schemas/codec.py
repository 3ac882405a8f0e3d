"""Typed wire messages and their MessagePack codec.

Every message on the bus is a frozen dataclass deriving from :class:`Struct`
(nested values) or :class:`Message` (top-level, carries a ``kind``). Decoding
validates everything that came off the network: the outer type, the kind,
each field's presence, type, length and pattern. A failure raises
:class:`DecodeError` naming the field, never anything else.

Unknown fields are ignored so that older readers accept newer writers.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar, get_args, get_origin

import msgpack

__all__ = [
    "DecodeError",
    "Message",
    "Struct",
    "decode",
    "decode_any",
    "encode",
    "field_spec",
    "from_obj",
    "to_obj",
]

#: Upper bound for any single message we accept off the wire.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: Default bound for a string field unless the field says otherwise.
DEFAULT_MAX_STR = 64 * 1024
#: Default bound for the number of items in a list or map.
DEFAULT_MAX_ITEMS = 10_000
MAX_DEPTH = 16


class DecodeError(ValueError):
    """Raised when bytes or objects do not form a valid message."""


def field_spec(
    *,
    default: Any = dataclasses.MISSING,
    default_factory: Any = dataclasses.MISSING,
    max_len: int | None = None,
    pattern: str | None = None,
    ge: int | None = None,
    le: int | None = None,
    item_pattern: str | None = None,
    min_items: int | None = None,
    unique: bool = False,
    exclude: frozenset[str] = frozenset(),
    doc: str = "",
) -> Any:
    """A dataclass field with validation bounds used by the decoder and JSON Schema."""
    meta: dict[str, Any] = {"doc": doc}
    if item_pattern is not None:
        meta["item_pattern"] = re.compile(item_pattern)
    if min_items is not None:
        meta["min_items"] = min_items
    if unique:
        meta["unique"] = True
    if exclude:
        meta["exclude"] = exclude
    if max_len is not None:
        meta["max_len"] = max_len
    if pattern is not None:
        meta["pattern"] = re.compile(pattern)
    if ge is not None:
        meta["ge"] = ge
    if le is not None:
        meta["le"] = le
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class Struct:
    """Base for nested message values (frozen dataclasses)."""

    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]


class Message(Struct):
    """Base for top-level messages; ``KIND`` tags the message on the wire."""

    KIND: ClassVar[str] = ""


S = TypeVar("S", bound=Struct)

_HINTS: dict[type, dict[str, Any]] = {}


def hints(cls: type) -> dict[str, Any]:
    """Resolved type hints of a dataclass, cached."""
    h = _HINTS.get(cls)
    if h is None:
        h = typing.get_type_hints(cls)
        _HINTS[cls] = h
    return h


def _fail(path: str, what: str) -> DecodeError:
    return DecodeError(f"{path}: {what}")


def _check(tp: Any, value: Any, path: str, meta: Mapping[str, Any], depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise _fail(path, "nested too deeply")
    origin = get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _check(inner[0], value, path, meta, depth)
        raise _fail(path, "unsupported union")  # pragma: no cover - schema bug
    if tp is Any:
        return value
    if tp is str:
        if not isinstance(value, str):
            raise _fail(path, f"expected string, got {type(value).__name__}")
        if len(value) > meta.get("max_len", DEFAULT_MAX_STR):
            raise _fail(path, f"string longer than {meta.get('max_len', DEFAULT_MAX_STR)}")
        pat = meta.get("pattern")
        if pat is not None and not pat.fullmatch(value):
            raise _fail(path, f"{value[:64]!r} does not match {pat.pattern}")
        return value
    if tp is bytes:
        if isinstance(value, bytearray | memoryview):
            value = bytes(value)
        if not isinstance(value, bytes):
            raise _fail(path, f"expected bytes, got {type(value).__name__}")
        if "max_len" in meta and len(value) > meta["max_len"]:
            raise _fail(path, f"bytes longer than {meta['max_len']}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise _fail(path, f"expected bool, got {type(value).__name__}")
        return value
    if tp is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _fail(path, f"expected integer, got {type(value).__name__}")
        if "ge" in meta and value < meta["ge"]:
            raise _fail(path, f"{value} is below {meta['ge']}")
        if "le" in meta and value > meta["le"]:
            raise _fail(path, f"{value} is above {meta['le']}")
        return value
    if tp is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise _fail(path, f"expected number, got {type(value).__name__}")
        return float(value)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise _fail(path, f"{value!r} is not one of {[e.value for e in tp]}") from None
    if origin is list:
        (item_tp,) = get_args(tp)
        if not isinstance(value, list | tuple):
            raise _fail(path, f"expected list, got {type(value).__name__}")
        if len(value) > meta.get("max_items", DEFAULT_MAX_ITEMS):
            raise _fail(path, "too many items")
        if len(value) < meta.get("min_items", 0):
            raise _fail(path, f"needs at least {meta['min_items']} item(s)")
        item_meta = {"pattern": meta["item_pattern"]} if "item_pattern" in meta else {}
        items = [
            _check(item_tp, v, f"{path}[{i}]", item_meta, depth + 1) for i, v in enumerate(value)
        ]
        for item in items:
            if item in meta.get("exclude", ()):
                raise _fail(path, f"{item!r} is reserved by the ABI")
        if meta.get("unique") and len(set(items)) != len(items):
            raise _fail(path, "duplicate items")
        return items
    if origin is dict:
        key_tp, val_tp = get_args(tp)
        if not isinstance(value, dict):
            raise _fail(path, f"expected map, got {type(value).__name__}")
        if len(value) > meta.get("max_items", DEFAULT_MAX_ITEMS):
            raise _fail(path, "too many entries")
        return {
            _check(key_tp, k, f"{path}.<key>", {"max_len": 256}, depth + 1): _check(
                val_tp, v, f"{path}.{k}", {}, depth + 1
            )
            for k, v in value.items()
        }
    if isinstance(tp, type) and issubclass(tp, Struct):
        return _from_obj(tp, value, path, depth + 1)
    raise _fail(path, f"unsupported type {tp!r}")  # pragma: no cover - schema bug


@dataclasses.dataclass(frozen=True, slots=True)
class _FieldSpec:
    name: str
    tp: Any
    meta: Mapping[str, Any]
    required: bool


_SPECS: dict[type, tuple[_FieldSpec, ...]] = {}


def _specs(cls: type) -> tuple[_FieldSpec, ...]:
    """Each field's name, resolved type, bounds and whether it is required; cached."""
    specs = _SPECS.get(cls)
    if specs is None:
        h = hints(cls)
        specs = tuple(
            _FieldSpec(
                f.name,
                h[f.name],
                f.metadata,
                f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
            )
            for f in dataclasses.fields(cls)
        )
        _SPECS[cls] = specs
    return specs


def _from_obj(cls: type[S], obj: Any, path: str, depth: int) -> S:
    if not isinstance(obj, dict):
        raise _fail(path or cls.__name__, f"expected map, got {type(obj).__name__}")
    if issubclass(cls, Message) and obj.get("kind") != cls.KIND:
        raise _fail(
            f"{path}.kind" if path else "kind", f"expected {cls.KIND!r}, got {obj.get('kind')!r}"
        )
    kwargs: dict[str, Any] = {}
    for f in _specs(cls):
        if f.name in obj:
            fpath = f"{path}.{f.name}" if path else f.name
            kwargs[f.name] = _check(f.tp, obj[f.name], fpath, f.meta, depth)
        elif f.required:
            raise _fail(f"{path}.{f.name}" if path else f.name, "missing")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise _fail(path or cls.__name__, str(e)) from None


def from_obj(cls: type[S], obj: Any) -> S:
    """Build and validate ``cls`` from plain Python objects (decoded msgpack or JSON)."""
    return _from_obj(cls, obj, "", 0)


def _plain(value: Any) -> Any:
    if isinstance(value, Struct):
        return to_obj(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def to_obj(value: Struct) -> dict[str, Any]:
    """Plain-object form of a struct (the inverse of :func:`from_obj`)."""
    out: dict[str, Any] = {}
    if isinstance(value, Message):
        out["kind"] = value.KIND
    for f in _specs(type(value)):
        v = getattr(value, f.name)
        out[f.name] = v if type(v) in _SCALARS else _plain(v)
    return out


_SCALARS = frozenset({str, bytes, int, bool, float, type(None)})


def encode(msg: Struct) -> bytes:
    """MessagePack bytes of a message."""
    data: bytes = msgpack.packb(to_obj(msg), use_bin_type=True)
    return data


def _unpack(data: bytes | bytearray | memoryview) -> Any:
    if len(data) > MAX_MESSAGE_BYTES:
        raise DecodeError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=MAX_MESSAGE_BYTES,
            max_bin_len=MAX_MESSAGE_BYTES,
            max_array_len=DEFAULT_MAX_ITEMS,
            max_map_len=DEFAULT_MAX_ITEMS,
            max_ext_len=0,
        )
    except Exception as e:  # msgpack raises a zoo of types on garbage
        raise DecodeError(f"not valid MessagePack: {type(e).__name__}: {e}") from None


def decode(cls: type[S], data: bytes | bytearray | memoryview) -> S:
    """Decode and validate one message of type ``cls``."""
    return from_obj(cls, _unpack(data))


def decode_any(data: bytes | bytearray | memoryview, *classes: type[Message]) -> Message:
    """Decode a message that may be any of ``classes``, chosen by its ``kind``."""
    obj = _unpack(data)
    if not isinstance(obj, dict):
        raise DecodeError(f"expected map, got {type(obj).__name__}")
    kind = obj.get("kind")
    for cls in classes:
        if kind == cls.KIND:
            return from_obj(cls, obj)
    raise DecodeError(f"kind: {kind!r} is not one of {[c.KIND for c in classes]}")
