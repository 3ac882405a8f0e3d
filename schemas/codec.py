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
from collections.abc import Callable, Mapping
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


#: A compiled field check: (value, path for messages, depth) -> the accepted value.
Checker = Callable[[Any, str, int], Any]


def _compile(tp: Any, meta: Mapping[str, Any]) -> Checker:
    """The check for one field type and its bounds, built once per field.

    Decoding runs on every message of the hot paths, so the type dispatch happens here,
    once, and each message only runs the few comparisons its fields need.
    """
    origin = get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        args = get_args(tp)
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"unsupported union {tp!r}")  # a schema bug, found at import
        check_inner = _compile(inner[0], meta)
        if type(None) not in args:  # pragma: no cover - Union[X] is X
            return check_inner

        def optional(value: Any, path: str, depth: int) -> Any:
            return None if value is None else check_inner(value, path, depth)

        return optional
    if tp is Any:
        return lambda value, path, depth: value
    if tp is str:
        max_len = meta.get("max_len", DEFAULT_MAX_STR)
        pat = meta.get("pattern")

        def string(value: Any, path: str, depth: int) -> Any:
            if type(value) is not str and not isinstance(value, str):
                raise _fail(path, f"expected string, got {type(value).__name__}")
            if len(value) > max_len:
                raise _fail(path, f"string longer than {max_len}")
            if pat is not None and not pat.fullmatch(value):
                raise _fail(path, f"{value[:64]!r} does not match {pat.pattern}")
            return value

        return string
    if tp is bytes:
        max_bytes = meta.get("max_len")

        def binary(value: Any, path: str, depth: int) -> Any:
            if type(value) is not bytes:
                if isinstance(value, bytearray | memoryview):
                    value = bytes(value)
                elif not isinstance(value, bytes):
                    raise _fail(path, f"expected bytes, got {type(value).__name__}")
            if max_bytes is not None and len(value) > max_bytes:
                raise _fail(path, f"bytes longer than {max_bytes}")
            return value

        return binary
    if tp is bool:

        def boolean(value: Any, path: str, depth: int) -> Any:
            if not isinstance(value, bool):
                raise _fail(path, f"expected bool, got {type(value).__name__}")
            return value

        return boolean
    if tp is int:
        ge, le = meta.get("ge"), meta.get("le")

        def integer(value: Any, path: str, depth: int) -> Any:
            if type(value) is not int and (not isinstance(value, int) or isinstance(value, bool)):
                raise _fail(path, f"expected integer, got {type(value).__name__}")
            if ge is not None and value < ge:
                raise _fail(path, f"{value} is below {ge}")
            if le is not None and value > le:
                raise _fail(path, f"{value} is above {le}")
            return value

        return integer
    if tp is float:

        def number(value: Any, path: str, depth: int) -> Any:
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise _fail(path, f"expected number, got {type(value).__name__}")
            return float(value)

        return number
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        enum_tp = tp

        def member(value: Any, path: str, depth: int) -> Any:
            try:
                return enum_tp(value)
            except ValueError:
                raise _fail(path, f"{value!r} is not one of {[e.value for e in enum_tp]}") from None

        return member
    if origin is list:
        return _compile_list(get_args(tp)[0], meta)
    if origin is dict:
        key_tp, val_tp = get_args(tp)
        check_key = _compile(key_tp, {"max_len": 256})
        check_val = _compile(val_tp, {})
        max_entries = meta.get("max_items", DEFAULT_MAX_ITEMS)

        def mapping(value: Any, path: str, depth: int) -> Any:
            if depth > MAX_DEPTH:
                raise _fail(path, "nested too deeply")
            if not isinstance(value, dict):
                raise _fail(path, f"expected map, got {type(value).__name__}")
            if len(value) > max_entries:
                raise _fail(path, "too many entries")
            return {
                check_key(k, f"{path}.<key>", depth + 1): check_val(v, f"{path}.{k}", depth + 1)
                for k, v in value.items()
            }

        return mapping
    if isinstance(tp, type) and issubclass(tp, Struct):
        struct_tp = tp

        def nested(value: Any, path: str, depth: int) -> Any:
            if depth > MAX_DEPTH:
                raise _fail(path, "nested too deeply")
            return _from_obj(struct_tp, value, path, depth + 1)

        return nested
    raise TypeError(f"unsupported field type {tp!r}")  # a schema bug


def _compile_list(item_tp: Any, meta: Mapping[str, Any]) -> Checker:
    check_item = _compile(
        item_tp, {"pattern": meta["item_pattern"]} if "item_pattern" in meta else {}
    )
    max_items = meta.get("max_items", DEFAULT_MAX_ITEMS)
    min_items = meta.get("min_items", 0)
    exclude = meta.get("exclude", ())
    unique = bool(meta.get("unique"))

    def items(value: Any, path: str, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise _fail(path, "nested too deeply")
        if not isinstance(value, list | tuple):
            raise _fail(path, f"expected list, got {type(value).__name__}")
        if len(value) > max_items:
            raise _fail(path, "too many items")
        if len(value) < min_items:
            raise _fail(path, f"needs at least {min_items} item(s)")
        out = [check_item(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
        for item in out:
            if item in exclude:
                raise _fail(path, f"{item!r} is reserved by the ABI")
        if unique and len(set(out)) != len(out):
            raise _fail(path, "duplicate items")
        return out

    return items


@dataclasses.dataclass(frozen=True, slots=True)
class _FieldSpec:
    name: str
    tp: Any
    meta: Mapping[str, Any]
    required: bool
    check: Checker


_SPECS: dict[type, tuple[_FieldSpec, ...]] = {}


def _specs(cls: type) -> tuple[_FieldSpec, ...]:
    """Each field's name, resolved type, bounds, whether it is required and its check;
    built once per class."""
    specs = _SPECS.get(cls)
    if specs is None:
        h = hints(cls)
        specs = tuple(
            _FieldSpec(
                f.name,
                h[f.name],
                f.metadata,
                f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
                _compile(h[f.name], f.metadata),
            )
            for f in dataclasses.fields(cls)
        )
        _SPECS[cls] = specs
    return specs


def _from_obj(cls: type[S], obj: Any, path: str, depth: int) -> S:
    if not isinstance(obj, dict):
        raise _fail(path or cls.__name__, f"expected map, got {type(obj).__name__}")
    kind: str = getattr(cls, "KIND", "")
    if kind and obj.get("kind") != kind:
        raise _fail(
            f"{path}.kind" if path else "kind", f"expected {kind!r}, got {obj.get('kind')!r}"
        )
    kwargs: dict[str, Any] = {}
    for f in _specs(cls):
        name = f.name
        if name in obj:
            kwargs[name] = f.check(obj[name], f"{path}.{name}" if path else name, depth)
        elif f.required:
            raise _fail(f"{path}.{name}" if path else name, "missing")
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
