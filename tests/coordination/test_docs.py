"""docs/coordination.md works as written: each shell command runs (on free ports, in a
temporary directory) and the Python sample prints what it says."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import subprocess
import time
from pathlib import Path

from tests.fixtures.etcd import EtcdProcess, free_port

ROOT = Path(__file__).parents[2]
TEXT = (ROOT / "docs/coordination.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", TEXT, re.S)


def test_the_install_script_is_quick_when_etcd_is_there() -> None:
    install = _blocks("sh")[0].strip()
    assert install == "scripts/install-etcd.sh"
    done = subprocess.run(
        [ROOT / install],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    assert "apt-get" not in done.stdout + done.stderr  # etcd is installed: nothing to do


def test_etcd_by_hand_then_the_python_sample(tmp_path: Path) -> None:
    _, command, health = (block.strip() for block in _blocks("sh"))
    client, peer = free_port(), free_port()

    def local(text: str) -> str:
        text = text.replace("/tmp/kiln-etcd", str(tmp_path / "kiln-etcd"))
        return text.replace("2379", str(client)).replace("2380", str(peer))

    log = (tmp_path / "etcd.log").open("wb")
    process = subprocess.Popen(shlex.split(local(command)), stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            answer = subprocess.run(
                shlex.split(local(health)), check=False, capture_output=True, text=True
            )
            if answer.stdout.strip() == '{"health":"true"}':
                break
            assert time.monotonic() < deadline and process.poll() is None, answer
            time.sleep(0.05)
        (sample,) = _blocks("python")
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            url = f"etcd://127.0.0.1:{client}"
            exec(compile(sample, "docs/coordination.md", "exec"), {"URL": url, "__name__": "doc"})
        assert out.getvalue() == "leader True\nTrue\nNone\n"
    finally:
        process.kill()
        process.wait()
        log.close()


def test_the_fixture_matches_what_the_page_says(etcd: EtcdProcess) -> None:
    assert etcd.url == f"etcd://127.0.0.1:{etcd.client_port}"
    for name in ("stop()", "start()", "kill()", "pause()", "resume()", "`.endpoints`"):
        assert name in TEXT
        assert hasattr(etcd, name.strip("`.()"))
