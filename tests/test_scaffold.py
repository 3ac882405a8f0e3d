"""`forgeone new` projects build and pass their own test, which uses `forgeone run` (no cluster)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

LANGS = ["wat", "c", "assemblyscript"]


@pytest.mark.parametrize("lang", LANGS)
def test_new_project_builds_and_its_test_passes(tmp_path: Path, lang: str) -> None:
    if lang == "assemblyscript" and shutil.which("npm") is None:
        pytest.skip("AssemblyScript needs Node.js and npm")
    name = f"my-{lang[:3]}"
    r = subprocess.run(
        [sys.executable, "-m", "coordinator", "new", name, "--lang", lang, "--dir", str(tmp_path)],
        capture_output=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    project = tmp_path / name
    assert (project / "forge.json").exists() and (project / "build.py").exists()
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(project)],
        capture_output=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout.decode()[-3000:]
    assert b"1 passed" in r.stdout
    again = subprocess.run(
        [sys.executable, "-m", "coordinator", "new", name, "--lang", lang, "--dir", str(tmp_path)],
        capture_output=True,
        timeout=60,
    )
    assert again.returncode == 1 and b"already exists" in again.stderr


def test_run_reports_output_logs_duration_and_refuses_ungranted(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "coordinator", "new", "shout", "--dir", str(tmp_path)],
        check=True,
        timeout=60,
    )
    project = tmp_path / "shout"
    subprocess.run([sys.executable, str(project / "build.py")], check=True, timeout=120)
    key, trust, pkg = tmp_path / "k.key", tmp_path / "t.json", tmp_path / "s.forgepkg"
    subprocess.run(
        [sys.executable, "-m", "coordinator", "keygen", "--out", str(key), "--trust", str(trust)],
        check=True,
        timeout=60,
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "coordinator",
            "pack",
            "--manifest",
            str(project / "forge.json"),
            "--wasm",
            str(project / "build" / "shout.wasm"),
            "--key",
            str(key),
            "-o",
            str(pkg),
        ],
        check=True,
        timeout=60,
    )
    run = [
        sys.executable,
        "-m",
        "coordinator",
        "run",
        str(pkg),
        "upper",
        "--data",
        "abc",
        "--trust",
        str(trust),
    ]
    r = subprocess.run(run, capture_output=True, timeout=60)
    assert r.returncode == 1 and b"not granted" in r.stderr and b"log" in r.stderr
    r = subprocess.run([*run, "--grant", "log"], capture_output=True, timeout=60)
    assert r.returncode == 0 and r.stdout == b"ABC"
    assert b"[INFO] ABC" in r.stderr and b"guest " in r.stderr and b"compile cache" in r.stderr
