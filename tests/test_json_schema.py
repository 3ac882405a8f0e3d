"""The committed JSON Schema documents (schemas/json/) against the Python types."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from schemas.admin import ErrorReply
from schemas.codec import DecodeError, Message, Struct, from_obj, to_obj
from schemas.json_schema import DOCUMENTED, JSON_DIR, json_schema, render_all
from schemas.manifest import Manifest
from schemas.messages import CallResult, DeploymentRecord, InvokeRequest
from tests.test_codec import MESSAGE_CLASSES, SAMPLES, sample_manifest, sample_record

REGENERATE = "run `python -m schemas.json_schema` to regenerate schemas/json/ and commit it"

GENERATED = render_all()
SCHEMAS: dict[str, dict[str, Any]] = {name: json.loads(text) for name, text in GENERATED.items()}


def doc_name(cls: type[Struct]) -> str:
    return f"{cls.__name__}.schema.json"


def validator(cls: type[Struct]) -> Draft202012Validator:
    return Draft202012Validator(SCHEMAS[doc_name(cls)])


def as_json(value: Any) -> Any:
    """The JSON rendering of a plain object: bytes become base64 strings."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_json(v) for v in value]
    return value


def instances() -> list[tuple[type[Struct], Struct]]:
    """A realistic instance of every documented type (several where there are several)."""
    out: list[tuple[type[Struct], Struct]] = [(Manifest, sample_manifest())]
    for cls in DOCUMENTED:
        out += [(cls, m) for m in SAMPLES if type(m) is cls]
    return out


INSTANCES = instances()


def _id(v: Any) -> str | None:
    return v.__name__ if isinstance(v, type) else None


# --- the committed documents cannot drift --------------------------------------------------


def test_committed_documents_equal_generated() -> None:
    committed = {p.name: p.read_text() for p in JSON_DIR.glob("*.json")}
    missing = sorted(set(GENERATED) - set(committed))
    extra = sorted(set(committed) - set(GENERATED))
    stale = sorted(n for n in set(GENERATED) & set(committed) if committed[n] != GENERATED[n])
    assert not (missing or extra or stale), (
        f"schemas/json/ is out of date (missing: {missing}, not generated: {extra}, "
        f"stale: {stale}); {REGENERATE}"
    )


def test_one_document_per_documented_type() -> None:
    assert set(GENERATED) == {doc_name(c) for c in DOCUMENTED}
    assert len(DOCUMENTED) == len(set(DOCUMENTED))


def test_rendering_is_deterministic() -> None:
    assert render_all() == GENERATED


# --- every document is a valid schema --------------------------------------------------------


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_document_is_valid_draft_2020_12(name: str) -> None:
    schema = SCHEMAS[name]
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == name.removesuffix(".schema.json")
    assert schema["type"] == "object"
    assert GENERATED[name].endswith("\n")


@pytest.mark.parametrize("cls", DOCUMENTED, ids=_id)
def test_committed_document_is_valid_draft_2020_12(cls: type[Struct]) -> None:
    path = JSON_DIR / doc_name(cls)
    assert path.exists(), f"{path} is missing; {REGENERATE}"
    Draft202012Validator.check_schema(json.loads(path.read_text()))


@pytest.mark.parametrize("cls", DOCUMENTED, ids=_id)
def test_document_describes_every_field(cls: type[Struct]) -> None:
    schema = json_schema(cls)
    fields = set(cls.__dataclass_fields__)
    props = set(schema["properties"])
    if issubclass(cls, Message):
        assert schema["properties"]["kind"] == {"const": cls.KIND}
        assert "kind" in schema["required"]
        props.discard("kind")
    assert props == fields


# --- realistic instances validate, broken ones do not ---------------------------------------


def test_every_message_type_is_documented() -> None:
    missing = {c.__name__ for c in MESSAGE_CLASSES} - {c.__name__ for c in DOCUMENTED}
    assert not missing, f"add {sorted(missing)} to schemas.json_schema.DOCUMENTED"


def test_every_documented_type_has_an_instance() -> None:
    assert {c for c, _ in INSTANCES} == set(DOCUMENTED)


@pytest.mark.parametrize(("cls", "value"), INSTANCES, ids=lambda v: _id(v) or "")
def test_realistic_instance_validates(cls: type[Struct], value: Struct) -> None:
    obj = json.loads(json.dumps(as_json(to_obj(value))))  # really JSON
    errors = [e.message for e in validator(cls).iter_errors(obj)]
    assert errors == []


@pytest.mark.parametrize(("cls", "value"), INSTANCES, ids=lambda v: _id(v) or "")
def test_instance_missing_a_required_field_does_not_validate(
    cls: type[Struct], value: Struct
) -> None:
    required = SCHEMAS[doc_name(cls)]["required"]
    assert required, f"{cls.__name__} has no required field"
    for field in required:
        obj = as_json(to_obj(value))
        del obj[field]
        assert not validator(cls).is_valid(obj), f"{cls.__name__} without {field!r} validated"
        # the decoder agrees
        with pytest.raises(DecodeError):
            from_obj(cls, _without(value, field))


def _without(value: Struct, field: str) -> dict[str, Any]:
    obj = to_obj(value)
    del obj[field]
    return obj


@pytest.mark.parametrize(
    ("cls", "value"),
    [(c, v) for c, v in INSTANCES if issubclass(c, Message)],
    ids=lambda v: _id(v) or "",
)
def test_instance_with_wrong_kind_does_not_validate(cls: type[Message], value: Message) -> None:
    others = sorted({c.KIND for c in DOCUMENTED if issubclass(c, Message)} - {cls.KIND})
    for kind in ["nope", cls.KIND.upper(), "", None, 1, *others]:
        obj = as_json(to_obj(value))
        obj["kind"] = kind
        assert not validator(cls).is_valid(obj), f"{cls.__name__} with kind {kind!r} validated"
        with pytest.raises(DecodeError):
            from_obj(cls, {**to_obj(value), "kind": kind})


def test_field_constraints_are_in_the_schema() -> None:
    """Patterns, lengths, ranges and enums reach JSON clients too."""
    record = as_json(to_obj(sample_record()))
    v = validator(DeploymentRecord)
    assert v.is_valid(record)
    for mutate in (
        lambda o: o.__setitem__("plugin", "text.stats"),
        lambda o: o.__setitem__("plugin", "text*"),
        lambda o: o.__setitem__("deployed_at_ms", -1),
        lambda o: o.__setitem__("deployed_at_ms", "1"),
        lambda o: o["versions"][0].__setitem__("weight", 101),
        lambda o: o["versions"][0].__setitem__("digest", "ABC"),
        lambda o: o["versions"][0]["manifest"].__setitem__("abi", "wasi/1"),
        lambda o: o["versions"][0]["manifest"]["limits"].__setitem__("memory_mb", 0),
        lambda o: o["versions"][0]["manifest"].__setitem__("description", "x" * 1025),
        lambda o: o["config"].__setitem__("k", 1),
        lambda o: o.__setitem__("versions", {}),
    ):
        bad = copy.deepcopy(record)
        mutate(bad)
        assert not v.is_valid(bad), bad


def test_error_code_enum_and_nullable_fields() -> None:
    er = validator(ErrorReply)
    assert er.is_valid({"kind": "error", "error": {"code": "TRAP", "message": "unreachable"}})
    assert not er.is_valid({"kind": "error", "error": {"code": "SEGFAULT"}})
    cr = validator(CallResult)
    assert cr.is_valid({"kind": "result", "ok": True, "error": None, "fuel_used": None})
    assert not cr.is_valid({"kind": "result", "ok": "yes"})
    assert not cr.is_valid({"kind": "result", "ok": True, "output": 5})


def test_unknown_fields_are_allowed_as_the_decoder_allows_them() -> None:
    obj = {"kind": "invoke", "input": "aGk=", "added_later": [1, 2]}
    assert validator(InvokeRequest).is_valid(obj)
    assert from_obj(InvokeRequest, {**obj, "input": b"hi"}) == InvokeRequest(input=b"hi")


# --- known drift between the schema and the decoder -----------------------------------------


@pytest.mark.parametrize(
    "exports",
    [[], ["alloc"], ["go", "go"], ["not-an-ident"]],
    ids=["empty", "reserved", "dup", "bad"],
)
def test_schema_refuses_manifests_the_decoder_refuses(exports: list[str]) -> None:
    obj = to_obj(sample_manifest())
    obj["exports"] = exports
    with pytest.raises(DecodeError):
        from_obj(Manifest, obj)
    assert not validator(Manifest).is_valid(as_json(obj))
