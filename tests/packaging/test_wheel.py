"""`make wheel` builds an abi3 wheel that installs and runs in a fresh virtual
environment on a machine without a Rust toolchain."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.integration]

SCRIPT = """
import sys, kilndb
from kilndb import _core
assert "site-packages" in _core.__file__, _core.__file__
with kilndb.open(sys.argv[1], sync="always") as db:
    fact = db.store("tasks").write("t1", {"title": "Hello"})
    assert db.store("tasks").read("t1").value == {"title": "Hello"}
    assert [f.key for f in db.replay()] == ["t1"]
print("ok", fact.position)
"""


def test_wheel_installs_and_runs_without_a_rust_toolchain(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    subprocess.run(
        ["make", "-s", "wheel", f"WHEEL_DIR={out}"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=900,
    )
    wheels = list(out.glob("kilndb-*.whl"))
    assert len(wheels) == 1, wheels
    wheel = wheels[0]
    assert "-cp311-abi3-" in wheel.name, wheel.name
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert any(n.startswith("kilndb/_core") and n.endswith(".so") for n in names)
    assert "kilndb/_core.pyi" in names and "kilndb/py.typed" in names
    # The web console's page and assets ship inside the package.
    for asset in ("index.html", "console.js", "console.css", "favicon.svg"):
        assert f"kilndb/server/console/{asset}" in names, asset

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # No cargo, rustc or maturin on PATH: the wheel must not need them.
    path = os.pathsep.join(
        p
        for p in os.environ.get("PATH", "").split(os.pathsep)
        if p and not any(Path(p, tool).exists() for tool in ("cargo", "rustc", "maturin"))
    )
    env = {**os.environ, "PATH": path, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("VIRTUAL_ENV", None)
    assert shutil.which("cargo", path=path) is None
    python = str(venv / "bin" / "python")
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", str(wheel)],
        check=True,
        env=env,
        timeout=600,
        cwd=tmp_path,
    )
    result = subprocess.run(
        [python, "-c", SCRIPT, str(tmp_path / "data")],
        check=True,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.stdout.split() == ["ok", "1"]
    kiln = subprocess.run(
        [str(venv / "bin" / "kiln"), "--help"],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert kiln.returncode == 0 and "serve" in kiln.stdout
