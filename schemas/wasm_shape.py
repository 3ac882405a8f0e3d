"""Read a module's imports and exports from its binary, without compiling it.

This is only the outer shape (type, import, function, export and start
sections); full validation is the engine's job, done before compiling. It
lets a deployment be refused for an unknown import or a missing export
before a single byte reaches the compiler.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAGIC = b"\x00asm\x01\x00\x00\x00"

VALTYPES = {
    0x7F: "i32",
    0x7E: "i64",
    0x7D: "f32",
    0x7C: "f64",
    0x7B: "v128",
    0x70: "funcref",
    0x6F: "externref",
}
KINDS = {0: "func", 1: "table", 2: "memory", 3: "global", 4: "tag"}


class WasmShapeError(ValueError):
    """The bytes are not a well-formed WebAssembly module (as far as the shape goes)."""


@dataclass(frozen=True, slots=True)
class FuncSig:
    params: tuple[str, ...]
    results: tuple[str, ...]

    def __str__(self) -> str:
        return f"({', '.join(self.params)}) -> ({', '.join(self.results)})"


@dataclass(frozen=True, slots=True)
class Import:
    module: str
    name: str
    kind: str
    sig: FuncSig | None = None


@dataclass(frozen=True, slots=True)
class Export:
    name: str
    kind: str
    sig: FuncSig | None = None


@dataclass(slots=True)
class ModuleShape:
    imports: list[Import] = field(default_factory=list)
    exports: dict[str, Export] = field(default_factory=dict)
    has_start: bool = False


class _Reader:
    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise WasmShapeError("unexpected end of section")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def u32(self) -> int:
        result = shift = 0
        for _ in range(5):
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                if result > 0xFFFFFFFF:
                    raise WasmShapeError("integer too large")
                return result
            shift += 7
        raise WasmShapeError("integer too long")

    def take(self, n: int) -> bytes:
        if n > self.end - self.pos:
            raise WasmShapeError("length runs past the end of the section")
        b = self.data[self.pos : self.pos + n]
        self.pos += n
        return b

    def name(self) -> str:
        try:
            return self.take(self.u32()).decode("utf-8")
        except UnicodeDecodeError:
            raise WasmShapeError("name is not UTF-8") from None

    def valtype(self) -> str:
        b = self.byte()
        if b not in VALTYPES:
            raise WasmShapeError(f"unsupported value type 0x{b:02x}")
        return VALTYPES[b]

    def limits(self) -> None:
        flags = self.byte()
        if flags not in (0, 1):
            raise WasmShapeError(f"unsupported limits flags 0x{flags:02x} (shared or 64-bit)")
        self.u32()
        if flags == 1:
            self.u32()


def read_shape(data: bytes) -> ModuleShape:
    """Parse the outer sections of ``data``; raise WasmShapeError if malformed."""
    if data[:8] != MAGIC:
        raise WasmShapeError("missing WebAssembly magic number and version 1")
    r = _Reader(data, 8)
    types: list[FuncSig] = []
    func_types: list[int] = []  # type index per function (imported first)
    shape = ModuleShape()
    raw_exports: list[tuple[str, int, int]] = []
    last_id = 0
    while r.pos < r.end:
        sid = r.byte()
        size = r.u32()
        if size > r.end - r.pos:
            raise WasmShapeError(f"section {sid} runs past the end of the module")
        s = _Reader(data, r.pos, r.pos + size)
        r.pos += size
        if sid != 0:
            if sid > 13:
                raise WasmShapeError(f"unknown section id {sid}")
            order = 2.5 if sid == 13 else sid  # tag section sits between memory and global
            if sid not in (12, 13) and order <= last_id:
                raise WasmShapeError(f"section {sid} out of order")
            if sid not in (12, 13):
                last_id = sid
        if sid == 1:
            for _ in range(s.u32()):
                if s.byte() != 0x60:
                    raise WasmShapeError("unsupported type form (only function types)")
                params = tuple(s.valtype() for _ in range(s.u32()))
                results = tuple(s.valtype() for _ in range(s.u32()))
                types.append(FuncSig(params, results))
        elif sid == 2:
            for _ in range(s.u32()):
                module, name = s.name(), s.name()
                kind = s.byte()
                if kind == 0:
                    idx = s.u32()
                    if idx >= len(types):
                        raise WasmShapeError(f"import {module}.{name} uses unknown type {idx}")
                    func_types.append(idx)
                    shape.imports.append(Import(module, name, "func", types[idx]))
                elif kind == 1:
                    s.byte()
                    s.limits()
                    shape.imports.append(Import(module, name, "table"))
                elif kind == 2:
                    s.limits()
                    shape.imports.append(Import(module, name, "memory"))
                elif kind == 3:
                    s.valtype()
                    s.byte()
                    shape.imports.append(Import(module, name, "global"))
                else:
                    raise WasmShapeError(f"import {module}.{name} has unsupported kind {kind}")
        elif sid == 3:
            for _ in range(s.u32()):
                idx = s.u32()
                if idx >= len(types):
                    raise WasmShapeError(f"function uses unknown type {idx}")
                func_types.append(idx)
        elif sid == 7:
            names: set[str] = set()
            for _ in range(s.u32()):
                name = s.name()
                if name in names:
                    raise WasmShapeError(f"export {name!r} appears twice")
                names.add(name)
                kind = s.byte()
                if kind not in KINDS:
                    raise WasmShapeError(f"export {name!r} has unknown kind {kind}")
                raw_exports.append((name, kind, s.u32()))
        elif sid == 8:
            s.u32()
            shape.has_start = True
        if sid in (1, 2, 3, 7, 8) and s.pos != s.end:
            raise WasmShapeError(f"section {sid} has trailing bytes")
    for name, kind, idx in raw_exports:
        sig = None
        if kind == 0:
            if idx >= len(func_types):
                raise WasmShapeError(f"export {name!r} names unknown function {idx}")
            sig = types[func_types[idx]]
        shape.exports[name] = Export(name, KINDS[kind], sig)
    return shape
