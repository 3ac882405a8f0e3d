"""``forgeone new NAME --lang wat|c|assemblyscript``: a plugin project, build script and test.

The project builds with ForgeOne's own plugin builder (plugins/build.py of
this checkout: WAT through wasmtime, C through zig from the ``ziglang``
package, AssemblyScript through npm), and its test runs the plugin with
``forgeone run``: no cluster, the worker's own runtime.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from schemas.manifest import NAME_PATTERN

CHECKOUT = Path(__file__).resolve().parent.parent
BUILDER = CHECKOUT / "plugins" / "build.py"
HEADER = CHECKOUT / "plugins" / "include" / "forge.h"

WAT = """;; {name}: returns its input upper-cased (ASCII). ABI: forge/1 (see docs/abi.md).
(module
  (import "forge" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 1)
  (global $top (mut i32) (i32.const 1024))
  (func (export "alloc") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $top))
    (global.set $top (i32.add (global.get $top) (local.get $n)))
    (local.get $p))
  (func (export "dealloc") (param $p i32) (param $n i32)
    (if (i32.eq (i32.add (local.get $p) (local.get $n)) (global.get $top))
      (then (global.set $top (local.get $p)))))
  (func (export "upper") (param $p i32) (param $n i32) (result i64)
    (local $i i32) (local $c i32)
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (local.set $c (i32.load8_u (i32.add (local.get $p) (local.get $i))))
      (if (i32.and (i32.ge_u (local.get $c) (i32.const 97))
                   (i32.le_u (local.get $c) (i32.const 122)))
        (then (i32.store8 (i32.add (local.get $p) (local.get $i))
                          (i32.sub (local.get $c) (i32.const 32)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (call $log (i32.const 1) (local.get $p) (local.get $n))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32))
            (i64.extend_i32_u (local.get $n)))))
"""

C = """/* {name}: counts the vowels of its input. ABI: forge/1 (see docs/abi.md, forge.h). */
#define FORGE_IMPLEMENTATION
#include "forge.h"

FORGE_EXPORT("vowels") int64_t vowels(const uint8_t *in, size_t len) {{
    unsigned n = 0;
    for (size_t i = 0; i < len; i++) {{
        switch (in[i] | 0x20) {{ case 'a': case 'e': case 'i': case 'o': case 'u': n++; }}
    }}
    char buf[16];
    size_t k = 0;
    char tmp[12];
    size_t t = 0;
    do {{ tmp[t++] = (char)('0' + n % 10); n /= 10; }} while (n);
    while (t) buf[k++] = tmp[--t];
    forge_log(1, buf, k);
    return forge_output_copy(buf, k);
}}
"""

AS = """// {name}: an Extism plugin in AssemblyScript (ABI extism/1): greets its input.
import {{ Host, Memory }} from "@extism/as-pdk";
import {{ error_set }} from "@extism/as-pdk/lib/env";

// asconfig.json routes AssemblyScript's abort here: the message becomes the error.
function abort(message: string | null, file: string | null, line: u32, column: u32): void {{
  error_set(Memory.allocateString(message === null ? "abort" : message).offset);
  unreachable();
}}

export function greet(): i32 {{
  const who = Host.inputString();
  Host.outputString("Hello, " + who + "!");
  return 0;
}}
"""

BUILD = '''"""Build this plugin into build/{name}.wasm with ForgeOne's plugin builder."""

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILDER = Path({builder!r})

spec = importlib.util.spec_from_file_location("forge_plugin_build", BUILDER)
builder = importlib.util.module_from_spec(spec)
spec.loader.exec_module(builder)
plugin = builder.discover(HERE.parent)[HERE.name]
(HERE / "build").mkdir(exist_ok=True)
path, status = builder.build_plugin(plugin, HERE / "build")
print(path, status)
sys.exit(0)
'''

TEST = '''"""Build, sign and run {name} locally (no cluster): python -m pytest test_{slug}.py"""

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def forgeone(*args, **kw):
    return subprocess.run([sys.executable, "-m", "coordinator", *args], capture_output=True,
                          timeout=300, **kw)


def test_{slug}(tmp_path):
    subprocess.run([sys.executable, str(HERE / "build.py")], check=True, timeout=600)
    key, trust, pkg = tmp_path / "k.key", tmp_path / "trust.json", tmp_path / "p.forgepkg"
    assert forgeone("keygen", "--out", str(key), "--trust", str(trust)).returncode == 0
    r = forgeone("pack", "--manifest", str(HERE / "forge.json"), "--wasm",
                 str(HERE / "build" / "{name}.wasm"), "--key", str(key), "-o", str(pkg))
    assert r.returncode == 0, r.stderr
    manifest = json.loads((HERE / "forge.json").read_text())
    grants = [g for p in manifest["permissions"] for g in ("--grant", p)]
    r = forgeone("run", str(pkg), "{fn}", "--data", {sample!r}, "--trust", str(trust), *grants)
    assert r.returncode == 0, r.stderr
    assert r.stdout == {expected!r}
'''

LANGS = {
    "wat": ("{name}.wat", WAT, "upper", "forge/1", ["log"], "hello", b"HELLO"),
    "c": ("{name}.c", C, "vowels", "forge/1", ["log"], "education", b"5"),
    "assemblyscript": ("index.ts", AS, "greet", "extism/1", [], "you", b"Hello, you!"),
}


def scaffold(name: str, lang: str, parent: Path) -> Path:
    """Write the project; return its folder."""
    if not re.fullmatch(NAME_PATTERN, name):
        raise ValueError(f"plugin name {name!r} must match {NAME_PATTERN}")
    if lang not in LANGS:
        raise ValueError(f"--lang must be one of {', '.join(LANGS)}")
    if not BUILDER.exists():
        raise FileNotFoundError(f"{BUILDER} not found: forgeone new needs a ForgeOne checkout")
    root = parent / name
    if root.exists():
        raise FileExistsError(f"{root} already exists")
    source, template, fn, abi, perms, sample, expected = LANGS[lang]
    root.mkdir(parents=True)
    (root / source.format(name=name)).write_text(template.format(name=name))
    manifest = {
        "name": name,
        "version": "0.1.0",
        "abi": abi,
        "exports": [fn],
        "permissions": perms,
        "limits": {},
        "description": f"{name} ({lang})",
    }
    (root / "forge.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if lang == "c":
        shutil.copy(HEADER, root / "forge.h")
    if lang == "assemblyscript":
        (root / "package.json").write_text(
            json.dumps(
                {
                    "name": name,
                    "private": True,
                    "devDependencies": {"@extism/as-pdk": "1.0.0", "assemblyscript": "0.27.37"},
                },
                indent=2,
            )
            + "\n"
        )
        (root / "asconfig.json").write_text(
            '{"options": {"use": ["abort=index/abort"], "runtime": "incremental"}}\n'
        )
        (root / ".npmrc").write_text("omit-lockfile-registry-resolved=true\nfund=false\n")
    (root / "build.py").write_text(BUILD.format(name=name, builder=str(BUILDER)))
    slug = name.replace("-", "_")
    (root / f"test_{slug}.py").write_text(
        TEST.format(name=name, slug=slug, fn=fn, sample=sample, expected=expected)
    )
    (root / ".gitignore").write_text("build/\nnode_modules/\n")
    return root
