"""One section of a doc page run as a reader would run it: one bash process, in a fresh
directory, the section's blocks in order.

How a section becomes a script:

- ``sh``/``bash``/``shell`` lines run as written under ``set -euo pipefail`` (bash reads
  comments, ``\\`` continuations, ``export`` and ``kill`` itself).
- A line that starts a server — ``kiln … serve …`` or ``etcd …`` — runs in the background
  as if in another terminal, whether or not it ends with ``&``; so does any line ending
  with ``&``. The next line waits (at most :data:`READY_SECONDS`) until the ports it
  names (``--port``, ``--http-port``, ``--listen-client-urls``) accept connections and
  the socket it names (``--unix``) exists, and fails if the process exits first.
- ``curl … # 200``: the status in the comment is the one the request must get.
- ``console`` commands run one by one with their output (stdout and stderr) kept, and
  compared with the block's output lines after the section ran. A command must succeed
  unless the block shows what it prints.
- ``python`` blocks run with the venv's interpreter, reading the program from a heredoc.
- ``<!-- doc-test: server -->`` starts ``kiln serve`` (its default data directory,
  ``./data``) before the block, as ``make run`` would have.
- The well-known ports the docs show (:data:`WELL_KNOWN_PORTS`: kiln's 7400/7300,
  gossip's 7946, etcd's 2379, and their neighbours) are rewritten, in every block of the
  section and in the expected output, to ports free on this machine, so the doc test
  neither collides with a ``make run`` holding 7400 nor with another test.

Every process the section started is in the bash process's own process group, stopped
(SIGTERM, then SIGKILL) when the section ends, however it ends.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.docs.blocks import Block, Section
from tests.fixtures.etcd import free_port

__all__ = ["READY_SECONDS", "SECTION_SECONDS", "WELL_KNOWN_PORTS", "Outcome", "run_section"]

WELL_KNOWN_PORTS = (7400, 7401, 7402, 7403, 7300, 7301, 7302, 7946, 7947, 7948, 2379, 2380)
#: How long a server started by a block may take to listen.
READY_SECONDS = 30
#: How long one section may run in all.
SECTION_SECONDS = 60.0
#: The return code of a section that ran out of time.
TIMED_OUT = -1
#: How long the section's processes have to exit on SIGTERM before SIGKILL.
STOP_SECONDS = 10.0

_PRELUDE = r"""set -euo pipefail
doctest_wait() {  # PID TARGET...: each TCP port accepts, each path exists; or PID died
  local pid=$1 target deadline=$((SECONDS + READY))
  shift
  for target in "$@"; do
    until if [[ $target =~ ^[0-9]+$ ]]; then (exec 3<>"/dev/tcp/127.0.0.1/$target") 2>/dev/null
          else [[ -e $target ]]; fi; do
      if ! kill -0 "$pid" 2>/dev/null; then
        echo "doc-test: the background command exited before $target was ready" >&2
        return 1
      fi
      if (( SECONDS >= deadline )); then
        echo "doc-test: $target was not ready after $READY s" >&2
        return 1
      fi
      sleep 0.02
    done
  done
}
doctest_http() {  # STATUS CURL-ARGS...: run curl, print the body; fail unless it answered STATUS
  local want=$1 body code
  shift
  body=$(mktemp)
  code=$("$@" -o "$body" -w '%{http_code}')
  cat "$body" && echo && rm -f "$body"
  if [[ $code != "$want" ]]; then
    echo "doc-test: HTTP $code where the docs say $want" >&2
    return 1
  fi
}
"""

_SERVER_LINE = re.compile(r"^(?:\w+=\S*\s+)*(?:kiln\b.*\sserve\b|etcd\b)")
_COMMENT = re.compile(r"\s+#[^'\"]*$")
#: ``curl … # 200``: the docs say which HTTP status the request gets.
_CURL_STATUS = re.compile(r"^(?P<command>curl\s.*?)\s+#\s*(?P<status>[1-5]\d\d)\b[^'\"]*$")


def rewrite_ports(text: str, ports: dict[int, int]) -> str:
    """``text`` with each well-known port replaced by this section's free one."""
    pattern = "|".join(str(port) for port in ports)
    return re.sub(rf"(?<![\d.])({pattern})(?!\d)", lambda m: str(ports[int(m[1])]), text)


def _commands(text: str) -> list[str]:
    """Shell text as logical lines: continuations joined, blank lines dropped."""
    return [line.strip() for line in re.sub(r"\s*\\\n\s*", " ", text).splitlines() if line.strip()]


def _ready_targets(command: str) -> list[str]:
    """The ports and socket paths a background command will listen on."""
    ports = re.findall(r"--(?:port|http-port)[ =](\d+)", command)
    ports += re.findall(r"--listen-client-urls[ =]\S*?:(\d+)", command)
    paths = re.findall(r"--unix[ =](\S+)", command)
    return [port for port in ports if port != "0"] + paths


def _background(command: str) -> str:
    """A command that starts something long-running, sent to the background and waited on."""
    if re.search(r"(?<!&)&$", command) is None:
        command = f"{command} &"
    targets = " ".join(shlex.quote(target) for target in _ready_targets(command))
    return f"{command}\ndoctest_wait $! {targets}"


def shell_lines(text: str) -> str:
    """A ``sh`` block as the script runs it."""
    out = []
    for line in _commands(text):
        bare = _COMMENT.sub("", line)
        if bare.startswith("#"):
            continue
        status = _CURL_STATUS.match(line)
        if _SERVER_LINE.match(bare) or re.search(r"(?<!&)&$", bare):
            out.append(_background(bare))
        elif status is not None:
            out.append(f"doctest_http {status['status']} {status['command']}")
        else:
            out.append(line)
    return "\n".join(out) + "\n"


@dataclass(slots=True)
class ConsoleCommand:
    """One ``$ command`` of a console block and the output the block shows after it."""

    where: str
    command: str
    expected: list[str] = field(default_factory=list)


def console_commands(block: Block, text: str) -> list[ConsoleCommand]:
    commands: list[ConsoleCommand] = []
    continuing = False
    for number, line in enumerate(text.splitlines(), start=block.line + 1):
        if continuing:
            commands[-1].command += "\n" + re.sub(r"^\s*> ?", "", line)
        elif line.startswith("$ ") or line == "$":
            commands.append(ConsoleCommand(f"{block.page}:{number}", line[2:]))
        elif commands:
            commands[-1].expected.append(line.rstrip())
        elif line.strip():
            raise AssertionError(f"{block.page}:{number}: output before any '$ ' command")
        continuing = bool(commands) and line.endswith("\\")
    return commands


def output_matches(expected: list[str], actual: list[str]) -> bool:
    """Whether ``actual`` lines are what ``expected`` shows: ``...`` (or ``…``) alone on a
    line stands for any lines, inside a line for any text; trailing blank lines and
    trailing spaces do not count."""
    while expected and not expected[-1].strip():
        expected = expected[:-1]
    while actual and not actual[-1].strip():
        actual = actual[:-1]
    if not expected:
        return not actual
    head = expected[0].strip()
    if head in ("...", "…"):
        return any(output_matches(expected[1:], actual[skip:]) for skip in range(len(actual) + 1))
    if not actual:
        return False
    pattern = re.escape(expected[0].rstrip())
    pattern = pattern.replace(re.escape("..."), ".*").replace(re.escape("…"), ".*")
    return re.fullmatch(pattern, actual[0].rstrip()) is not None and output_matches(
        expected[1:], actual[1:]
    )


@dataclass(slots=True)
class Script:
    """A section as one bash script, and the console output it must show."""

    text: str
    console: dict[int, ConsoleCommand]


def build_script(section: Section, ports: dict[int, int], harness: Path) -> Script:
    parts = [_PRELUDE]
    console: dict[int, ConsoleCommand] = {}
    server_started = False
    for block in section.blocks:
        if not block.runs_here and not (block.serve_config and block.skip is None):
            continue
        text = rewrite_ports(block.text, ports)
        setup = [rewrite_ports(line, ports) for line in block.setup]
        parts.append(f"echo {shlex.quote(block.where)} > {shlex.quote(str(harness / 'current'))}")
        if block.server and not server_started:
            server_started = True
            serve = f"kiln serve --port {ports[7400]} --http-port {ports[7300]}"
            parts.append(f"{serve} > {shlex.quote(str(harness / 'server.log'))} 2>&1 &")
            parts.append(f"doctest_wait $! {ports[7400]} {ports[7300]}")
        if block.info == "python":
            program = "\n".join([*setup, text])
            parts.append(
                f"\"$DOCTEST_PYTHON\" - <<'DOCTEST_PYTHON_EOF'\n{program}DOCTEST_PYTHON_EOF"
            )
        elif block.info == "console":
            parts.extend(setup)
            for command in console_commands(block, text):
                bare = _COMMENT.sub("", _commands(command.command)[0]) if command.command else ""
                if _SERVER_LINE.match(bare) or re.search(r"(?<!&)&$", bare):
                    parts.append(_background(bare))
                    continue
                index = len(console)
                console[index] = command
                out, rc = harness / f"out.{index}", harness / f"rc.{index}"
                parts.append(
                    f"{{ {command.command}\n}} > {shlex.quote(str(out))} 2>&1"
                    f" || echo $? > {shlex.quote(str(rc))}"
                )
        elif block.serve_config:
            config = harness / f"config-{block.line}.toml"
            parts.append(
                f"cat > {shlex.quote(str(config))} <<'DOCTEST_TOML_EOF'\n{text}DOCTEST_TOML_EOF"
            )
            # The ports the file sets (rewritten above), else free ones on the command
            # line: the server must listen on them before it is stopped.
            given = dict(re.findall(r"^\s*(port|http_port)\s*=\s*(\S+)", text, re.M))
            serve = f"kiln --data ./config-check serve --config {config}"
            ports_given = [given.get(key) or str(free_port()) for key in ("port", "http_port")]
            flags = [
                f"--{key.replace('_', '-')} {port}"
                for key, port in zip(("port", "http_port"), ports_given, strict=True)
                if key not in given
            ]
            parts.append(f"{serve} {' '.join(flags)} &".replace("  ", " "))
            parts.append(f"doctest_wait $! {' '.join(map(shlex.quote, ports_given))}")
            parts.append('kill "$!"')
        else:
            parts.extend(setup)
            parts.append(shell_lines(text))
    return Script("\n".join(parts) + "\n", console)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a section's script ended."""

    returncode: int
    output: str
    current: str
    problems: tuple[str, ...]

    def report(self) -> str:
        ended = "timed out" if self.returncode == TIMED_OUT else f"exit {self.returncode}"
        lines = [f"the section failed in the block at {self.current} ({ended})"]
        lines += list(self.problems)
        lines += ["--- output ---", self.output[-6000:]]
        return "\n".join(lines)


def _stop_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def run_section(section: Section, directory: Path) -> Outcome:
    """Run ``section`` in ``directory`` (its ``work`` subdirectory is the reader's
    current directory) and stop everything it started."""
    work, harness = directory / "work", directory / "harness"
    work.mkdir(parents=True)
    harness.mkdir()
    ports = {port: free_port() for port in WELL_KNOWN_PORTS}
    script = build_script(section, ports, harness)
    (harness / "section.sh").write_text(script.text)
    env = {key: value for key, value in os.environ.items() if not key.startswith("KILN_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DOCTEST_PYTHON"] = sys.executable
    env["READY"] = str(READY_SECONDS)
    log = harness / "output.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            ["bash", str(harness / "section.sh")],
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            returncode = process.wait(timeout=SECTION_SECONDS)
        except subprocess.TimeoutExpired:
            returncode = TIMED_OUT
        finally:
            _stop_group(process.pid)
            process.wait()
    problems = []
    for index, command in script.console.items():
        printed = (
            (harness / f"out.{index}").read_text() if (harness / f"out.{index}").exists() else None
        )
        failed = (harness / f"rc.{index}").exists()
        if printed is None:
            continue  # never ran: the section stopped before it
        if failed and not any(line.strip() for line in command.expected):
            problems.append(f"{command.where}: `{command.command}` failed:\n{printed}")
        elif not output_matches(command.expected, printed.splitlines()):
            problems.append(
                f"{command.where}: `{command.command}` printed\n{printed}"
                f"where the block shows\n" + "\n".join(command.expected)
            )
    current = (harness / "current").read_text().strip() if (harness / "current").exists() else "-"
    return Outcome(returncode, log.read_text(errors="replace"), current, tuple(problems))
