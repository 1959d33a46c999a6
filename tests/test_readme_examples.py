"""Every shell example of README.md works as written, run as a newcomer runs them: the first
README command (``scripts/demo.sh``), then the others, copied into a terminal in the checkout.

The examples are found when the tests are collected: every fenced ``sh`` block of README.md
(also one indented in a list), in README order, so an example someone adds is covered without
touching this file. Each block is one pytest item (``README.md:LINE``).

How they run
    ``scripts/demo.sh`` is started first, as the README's first command, in its own session
    (so "Ctrl-C" can reach it), with a temporary data directory and free ports
    (``TELEMATICS_DATA_DIR``, ``TELEMATICS_MQTT_PORT``, ``TELEMATICS_API_PORT``) and the
    administrator password the README's login example exports (the README says to set it
    before the first start). The last item stops it like Ctrl-C and checks that it stops
    cleanly, printing the simulator's one-line summary.

    Every block runs as a bash script (``set -euo pipefail``) in a working directory that looks
    like the checkout (a symbolic link to each of its files) but whose ``data/`` is the demo's
    data directory, with the environment of a fresh terminal (no ``TELEMATICS_*`` variables).
    Both directories have a space in their paths.
    Variables a block sets reach the blocks after it, as in one terminal. The README writes the
    default ports, ``1884`` (broker) and ``8080`` (API), so a newcomer can copy the commands
    literally; they are the one thing rewritten, to the demo's ports.

What is checked
    Every command's exit status (``set -e``); every HTTP answer ``curl`` gets (through a shell
    function that records it) is not an error (status below 400) and parses when it says it
    is JSON; every ``.json`` or ``.jsonl`` file a block writes parses; nothing prints a Python
    traceback; and the unit of the ``mosquitto_pub`` example has its sample stored.

Conventions in README.md (keep them few)
    * A command whose comment says ``until Ctrl-C`` runs for :data:`LONG_RUNNING_S` seconds,
      is then interrupted like Ctrl-C (SIGINT to its process group) and must exit with 0.
    * A block right after ``<!-- example: skip, REASON -->`` is not run; it is reported as
      skipped with REASON (say it in the README's text too).
    * ``scripts/demo.sh`` is the demo this test started; ``scripts/test.sh`` runs as
      ``scripts/test.sh --collect-only -q`` (set-up, ruff, mypy and pytest collecting every
      test): running the whole suite from inside itself would never end.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.broker import free_port
from tests.support.processes import _kill, _processes, kill_processes_mentioning
from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"

#: how long a command that runs until Ctrl-C runs before it is interrupted
LONG_RUNNING_S = 5
#: a block (or the demo's stop) that takes longer than this has hung
BLOCK_TIMEOUT_S = 600
#: the README's literal ports, rewritten to the demo's
README_MQTT_PORT = 1884
README_API_PORT = 8080

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[ \t]*$")
_SKIP = re.compile(r"^\s*<!--\s*example:\s*skip\b[,:;\s]*(?P<reason>.*?)\s*-->\s*$")
_UNTIL_CTRL_C = re.compile(r"#.*\buntil Ctrl-C\b")
_DEMO_LINE = re.compile(r"^scripts/demo\.sh\b")
_TEST_LINE = re.compile(r"^scripts/test\.sh\b")
_ADMIN_PASSWORD = re.compile(r"""^export TELEMATICS_ADMIN_PASSWORD='([^']*)'""", re.MULTILINE)


# --- finding the examples (pure) -------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """One fenced ``sh`` block of the README."""

    line: int  #: 1-based line of its opening fence
    text: str  #: its lines, without the fences and the indentation of the fence
    skip: str | None = None  #: why it is not run (from ``<!-- example: skip, ... -->``)

    @property
    def id(self) -> str:
        return f"README.md:{self.line}"


def shell_blocks(markdown: str) -> list[Block]:
    """Every fenced ``sh``/``bash``/``shell`` block, in order. A block right after an
    ``<!-- example: skip, REASON -->`` line (blank lines between allowed) carries REASON; a
    skip marker without a reason is an error, as is a marker that no block follows."""
    lines = markdown.splitlines()
    blocks: list[Block] = []
    pending_skip: tuple[int, str] | None = None
    i = 0
    while i < len(lines):
        marker = _SKIP.match(lines[i])
        if marker is not None:
            if not marker["reason"]:
                raise ValueError(f"README.md:{i + 1}: a skipped example must say why")
            pending_skip = (i + 1, marker["reason"])
            i += 1
            continue
        fence = _FENCE.match(lines[i])
        if fence is None:
            if lines[i].strip() and pending_skip is not None:
                raise ValueError(f"README.md:{pending_skip[0]}: no example right after it")
            i += 1
            continue
        indent, start = fence["indent"], i
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1  # the closing fence
        if fence["lang"] in {"sh", "bash", "shell"}:
            skip = pending_skip[1] if pending_skip is not None else None
            blocks.append(Block(start + 1, "\n".join(body) + "\n", skip))
        elif pending_skip is not None:
            raise ValueError(f"README.md:{pending_skip[0]}: the example after it is not sh")
        pending_skip = None
    return blocks


def logical_lines(text: str) -> list[str]:
    """The block's commands: lines joined where one ends in a backslash."""
    out: list[str] = []
    current = ""
    for line in text.splitlines():
        current = f"{current}\n{line}" if current else line
        if not line.endswith("\\"):
            out.append(current)
            current = ""
    if current:
        out.append(current)
    return out


def rewrite_ports(text: str, *, mqtt_port: int, api_port: int) -> str:
    """The README's default ports, as whole numbers, to the demo's."""
    text = re.sub(rf"(?<![\w.]){README_MQTT_PORT}(?![\w.])", str(mqtt_port), text)
    return re.sub(rf"(?<![\w.]){README_API_PORT}(?![\w.])", str(api_port), text)


def script_for(block: Block, *, repo: Path) -> str:
    """The bash script that runs ``block`` (see the module docstring)."""
    out: list[str] = []
    for command in logical_lines(block.text):
        stripped = command.strip()
        if _DEMO_LINE.match(stripped):
            out.append("__example_demo_is_running")
        elif _TEST_LINE.match(stripped):
            out.append(f"{shlex.quote(str(repo / 'scripts/test.sh'))} --collect-only -q")
        elif _UNTIL_CTRL_C.search(command.splitlines()[-1]):
            out.append(f"{{ {command}\n}} &\n__example_interrupt_after $! {LONG_RUNNING_S}")
        else:
            out.append(command)
    return _PRELUDE + "\n".join(out) + "\n"


#: what every block's script starts with: strict bash, every variable exported (so the next
#: block can be given them), job control (a command run in the background gets a process
#: group of its own, which "Ctrl-C" interrupts), and the helpers
_PRELUDE = r"""set -euo pipefail
set -a
set -m
trap 'env -0 > "$EXAMPLE_STATE"' EXIT

curl() {  # records every answer for the checks after the block
  local record
  record=$(mktemp "$EXAMPLE_LOG/curl.XXXXXX")
  printf '%s\n' "$*" > "$record.args"
  command curl -D "$record.headers" "$@" | tee "$record.body"
}

__example_demo_is_running() {
  kill -0 "$EXAMPLE_DEMO_PID"
}

__example_interrupt_after() {  # PID SECONDS: let it run, then Ctrl-C; it must exit with 0
  local pid=$1 left=$(( $2 * 10 )) status=0
  while kill -0 "$pid" 2>/dev/null && [ "$left" -gt 0 ]; do sleep 0.1; left=$((left - 1)); done
  kill -INT -- "-$pid" 2>/dev/null || true
  wait "$pid" || status=$?
  if [ "$status" -ne 0 ]; then
    echo "example: exited with $status after Ctrl-C (or before it)" >&2
    return "$status"
  fi
}

"""


BLOCKS = shell_blocks(README.read_text(encoding="utf-8"))


# --- the demo and the terminal ------------------------------------------------------------------


@dataclass
class Terminal:
    """The newcomer's terminal: the checkout to work in, the environment so far, the demo."""

    workdir: Path
    data: Path
    logs: Path
    mqtt_port: int
    api_port: int
    demo: subprocess.Popen[bytes]
    demo_output: Path
    env: dict[str, str]
    failed: list[str] = field(default_factory=list)
    published: list[tuple[str, int]] = field(default_factory=list)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"


def fresh_environment() -> dict[str, str]:
    """This process's environment without the project's variables: a new terminal's."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TELEMATICS_", "DEVICE_SIM_", "PYTEST_", "COV_"))
    }


def checkout_lookalike(workdir: Path, data: Path) -> None:
    """``workdir``: a link to every file of the checkout, and ``data`` as its ``data/``."""
    workdir.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in {"data", ".git"} and not entry.name.endswith("cache"):
            (workdir / entry.name).symlink_to(entry)
    (workdir / "data").symlink_to(data)


@pytest.fixture(scope="module")
def terminal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Terminal]:
    base = tmp_path_factory.mktemp("readme")
    # a space in both paths, as in many a newcomer's home directory ("My Projects"): the
    # examples and the demo must quote what they are given
    data, workdir, logs = base / "demo data", base / "the checkout", base / "logs"
    data.mkdir()
    logs.mkdir()
    checkout_lookalike(workdir, data)
    mqtt_port, api_port = free_port(), free_port()
    env = fresh_environment()
    demo_env = {
        **env,
        "TELEMATICS_DATA_DIR": str(data),
        "TELEMATICS_MQTT_PORT": str(mqtt_port),
        "TELEMATICS_API_PORT": str(api_port),
    }
    chosen = _ADMIN_PASSWORD.search(README.read_text(encoding="utf-8"))
    if chosen is not None:  # "before the first start", as the README says
        demo_env["TELEMATICS_ADMIN_PASSWORD"] = chosen[1]
    output = logs / "demo.log"
    with output.open("wb") as out:
        demo = subprocess.Popen(
            [str(REPO / "scripts/demo.sh")],
            cwd=REPO,
            env=demo_env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, like a terminal's foreground job
        )
    running = Terminal(workdir, data, logs, mqtt_port, api_port, demo, output, env)
    running.env["EXAMPLE_DEMO_PID"] = str(demo.pid)

    def ready() -> bool:
        if demo.poll() is not None:
            pytest.fail(f"scripts/demo.sh exited with {demo.returncode}:\n{_tail(output)}")
        try:
            healthy = httpx.get(f"{running.api}/healthz").status_code == 200
        except httpx.HTTPError:
            return False
        return healthy and (data / "secrets" / "demo-units.json").exists()

    try:
        # the first start sets up the virtual environment (pip) before anything runs
        wait_until(ready, timeout=240, what="scripts/demo.sh: the API of telematics up --demo")
        yield running
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGINT)
            try:
                demo.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(demo.pid, signal.SIGKILL)
                demo.wait()
        # a broker (its own session) or a part that outlived telematics up: ours mention
        # this test's directory on their command line
        kill_processes_mentioning(base)


def _tail(path: Path, lines: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# --- running one block ------------------------------------------------------------------------


def run_block(block: Block, terminal: Terminal) -> str:
    """Run ``block`` in ``terminal``; return its output; fail with it on any problem."""
    script = rewrite_ports(
        script_for(block, repo=REPO), mqtt_port=terminal.mqtt_port, api_port=terminal.api_port
    )
    log = terminal.logs / f"block-{block.line}"
    log.mkdir()
    state = log / "env"
    before = {p: p.stat().st_mtime_ns for p in _written_files(terminal.workdir)}
    env = {**terminal.env, "EXAMPLE_LOG": str(log), "EXAMPLE_STATE": str(state)}
    shell = subprocess.Popen(
        ["bash", "-c", script],
        cwd=terminal.workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # so that whatever it leaves behind can be found and ended
    )
    problems: list[str] = []
    try:
        stdout, _ = shell.communicate(timeout=BLOCK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        problems.append(f"still running after {BLOCK_TIMEOUT_S} s")
        _kill_session(shell.pid)
        stdout, _ = shell.communicate()
    if _kill_session(shell.pid):
        problems.append("it left processes running")
    output = stdout.decode(errors="replace")
    (log / "output").write_text(output)
    if state.exists():  # the variables it set, for the next blocks
        pairs = (item.split("=", 1) for item in state.read_bytes().decode().split("\0") if item)
        terminal.env = {
            k: v
            for k, v in pairs
            if k not in {"EXAMPLE_LOG", "EXAMPLE_STATE"} and not k.startswith("BASH_FUNC_")
        }
    if shell.returncode != 0:
        problems.append(f"exit status {shell.returncode}")
    if "Traceback (most recent call last)" in output:
        problems.append("a Python traceback")
    problems += _http_problems(log)
    problems += _file_problems(terminal.workdir, before)
    if problems:
        terminal.failed.append(block.id)
        pytest.fail(
            f"{block.id}: {'; '.join(problems)}\n--- script ---\n{script}\n--- output ---\n"
            f"{output[-6000:]}"
        )
    return output


def _kill_session(session: int) -> bool:
    """Kill what is left of the session a block ran in (its commands run in the background
    have process groups of their own, but stay in its session); True if anything was."""
    return _kill([pid for pid, sid, _ in _processes() if sid == session and pid != session])


def _http_problems(log: Path) -> list[str]:
    """What was wrong with the HTTP answers ``curl`` got in the block."""
    problems = []
    for headers_path in sorted(log.glob("curl.*.headers")):
        record = headers_path.with_suffix("")
        args = Path(f"{record}.args").read_text().strip()
        responses = headers_path.read_text(errors="replace").split("\r\n\r\n")
        head = [r for r in responses if r.strip()][-1].splitlines()
        status = int(head[0].split()[1])
        content_type = next(
            (h.split(":", 1)[1].strip() for h in head[1:] if h.lower().startswith("content-type:")),
            "",
        )
        body = Path(f"{record}.body").read_bytes()
        if status >= 400:
            problems.append(f"curl {args} answered {status}: {body[:500]!r}")
        elif "json" in content_type and body.strip():
            try:
                json.loads(body)
            except ValueError as exc:
                problems.append(f"curl {args} answered JSON that does not parse: {exc}")
    return problems


def _written_files(workdir: Path) -> list[Path]:
    return [p for p in workdir.iterdir() if p.suffix in {".json", ".jsonl"} and p.is_file()]


def _file_problems(workdir: Path, before: dict[Path, int]) -> list[str]:
    """The ``.json`` and ``.jsonl`` files the block wrote must parse."""
    problems = []
    for path in _written_files(workdir):
        if before.get(path) == path.stat().st_mtime_ns:
            continue
        text = path.read_text(errors="replace")
        documents = text.splitlines() if path.suffix == ".jsonl" else [text]
        if not text.strip():
            problems.append(f"{path.name} is empty")
        for document in documents:
            try:
                json.loads(document)
            except ValueError as exc:
                problems.append(f"{path.name} is not JSON: {exc}")
                break
    return problems


# --- the tests ----------------------------------------------------------------------------------

SAMPLE = """Intro.

```sh
scripts/demo.sh     # the demo
scripts/test.sh     # the tests
```

- a list item:

  ```sh
  curl -s localhost:8080/v1/x \\
       -d a=1   # no port 18080 or 1764230401884 here
  .venv/bin/telematics sim --mqtt-url mqtt://127.0.0.1:1884   # runs until Ctrl-C
  ```

```json
{"not": "shell"}
```

<!-- example: skip, it takes an hour -->

```sh
sleep 3600
```
"""


def test_examples_are_found_with_their_conventions() -> None:
    first, listed, skipped = shell_blocks(SAMPLE)
    assert (first.line, listed.line, skipped.line) == (3, 10, 22)
    assert skipped.skip == "it takes an hour"
    assert listed.text.startswith("curl -s localhost:8080/v1/x \\\n     -d a=1")
    assert logical_lines(listed.text)[0].endswith("here")
    script = rewrite_ports(script_for(listed, repo=Path("/r")), mqtt_port=21000, api_port=22000)
    assert "localhost:22000/v1/x" in script
    assert "18080 or 1764230401884" in script
    assert "{ .venv/bin/telematics sim --mqtt-url mqtt://127.0.0.1:21000" in script
    assert f"}} &\n__example_interrupt_after $! {LONG_RUNNING_S}" in script
    script = script_for(first, repo=Path("/r"))
    assert "\n__example_demo_is_running\n/r/scripts/test.sh --collect-only -q\n" in script
    with pytest.raises(ValueError, match="must say why"):
        shell_blocks("<!-- example: skip -->\n```sh\ntrue\n```\n")
    with pytest.raises(ValueError, match="no example right after it"):
        shell_blocks("<!-- example: skip, why -->\ntext\n```sh\ntrue\n```\n")


def test_the_readme_has_examples_and_runs_the_demo_first() -> None:
    assert len(BLOCKS) >= 5
    commands = [c.strip() for c in logical_lines(BLOCKS[0].text)]
    demo = next((i for i, c in enumerate(commands) if _DEMO_LINE.match(c)), None)
    assert demo is not None, "the README's first example starts the demo"
    # the administrator's password is chosen before the demo's first start: exported only in
    # the login example after it, a newcomer logged in with a password the demo never used
    assert any(_ADMIN_PASSWORD.match(c) for c in commands[:demo]), commands
    skipped = [b for b in BLOCKS if b.skip is not None]
    assert len(skipped) <= 1, f"keep skipped examples to a minimum: {skipped}"


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_example(block: Block, terminal: Terminal) -> None:
    if block.skip is not None:
        pytest.skip(f"{block.id}: {block.skip}")
    output = run_block(block, terminal)
    if "mosquitto_pub" in block.text:
        _check_the_sample_arrived(block, terminal, output)


def _check_the_sample_arrived(block: Block, terminal: Terminal, output: str) -> None:
    """The unit the example publishes as has its sample in the telemetry store (the exit
    status of ``mosquitto_pub`` only says that the broker took the message)."""
    topics = re.findall(r"-t\s+(\S+)", block.text)
    assert topics, f"{block.id}: mosquitto_pub without -t"
    vin = topics[0].split("/")[2]
    vin = terminal.env.get(vin.lstrip("$"), vin) if vin.startswith("$") else vin
    database = terminal.data / "telemetry.db"

    def stored() -> bool:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
            found = db.execute(
                "SELECT 1 FROM samples JOIN vehicles ON vehicles.id = samples.vehicle_id "
                "WHERE vehicles.vin = ?",
                (vin,),
            ).fetchone()
        return found is not None

    wait_until(stored, timeout=20, what=f"a sample of {vin} in {database}; output: {output}")


def test_the_readmes_json_examples_parse() -> None:
    markdown = README.read_text(encoding="utf-8").splitlines()
    blocks = re.findall(r"^```json\n(.*?)^```", "\n".join(markdown) + "\n", re.S | re.M)
    assert blocks
    for text in blocks:
        json.loads(text)


@pytest.mark.slow
def test_the_demo_stops_cleanly_on_ctrl_c(terminal: Terminal) -> None:
    """Ctrl-C (SIGINT to the demo's process group) stops everything with exit status 0, and
    the demo's simulator says how its run went in one line, not a page of JSON."""
    assert terminal.demo.poll() is None, _tail(terminal.demo_output)
    mark = terminal.demo_output.stat().st_size
    os.killpg(terminal.demo.pid, signal.SIGINT)
    status = terminal.demo.wait(120)
    printed = terminal.demo_output.read_bytes()[mark:].decode(errors="replace")
    assert status == 0, printed
    assert "Traceback (most recent call last)" not in printed
    summary = [line for line in printed.splitlines() if "device_sim: done in" in line]
    assert len(summary) == 1, printed
    assert '"vehicles":' not in printed  # no JSON summary
    assert "per 1,000 units" not in summary[0]  # 5 units say nothing per 1,000


# --- what the API examples show ------------------------------------------------------------------


@pytest.fixture(scope="module")
def openapi(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from gateway.api import create_app
    from gateway.api.app import ApiSettings

    db = tmp_path_factory.mktemp("openapi") / "telemetry.db"
    document: dict[str, Any] = create_app(ApiSettings(db)).openapi()
    return document


def posted_bodies(markdown: str) -> dict[str, list[dict[str, Any]]]:
    """Route -> the JSON bodies the README's examples POST to it. A shell variable spliced
    into a body (``'$account'``) stands for a number."""
    found: dict[str, list[dict[str, Any]]] = {}
    for block in shell_blocks(markdown):
        for command in logical_lines(block.text):
            route = re.search(r"-X POST\s+\S*?(/v1/[\w/{}.-]+)", command)
            body = re.search(r"-d\s+'(\{.*\})'", command, re.S)
            if route is None or body is None:
                continue
            text = re.sub(r"""'"?\$\{?\w+\}?"?'""", "1", body[1])
            found.setdefault(route[1], []).append(json.loads(text))
    return found


def _schema(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


#: what an administrator sets up first: a newcomer found no body for any of them
SETUP_ROUTES = ("/v1/accounts", "/v1/users", "/v1/vehicles", "/v1/api-keys")


def test_the_readme_shows_the_bodies_that_set_an_installation_up(openapi: dict[str, Any]) -> None:
    """The README said "add vehicles with POST /v1/vehicles" and "create an API key (POST
    /v1/api-keys)" but showed no body for them, nor for an account or a user: a newcomer
    learned the fields from 422 answers. Each such route has an example whose body has every
    field the route requires, only fields it knows, and allowed values."""
    bodies = posted_bodies(README.read_text(encoding="utf-8"))
    for route in SETUP_ROUTES:
        assert bodies.get(route), f"no README example POSTs a body to {route}"
        request = openapi["paths"][route]["post"]["requestBody"]["content"]["application/json"]
        schema = _schema(openapi, request["schema"])
        for body in bodies[route]:
            assert set(schema.get("required", [])) <= set(body), (route, body)
            assert set(body) <= set(schema["properties"]), (route, body)
            for name, value in body.items():
                allowed = _schema(openapi, schema["properties"][name]).get("enum")
                assert allowed is None or value in allowed, (route, name, value, allowed)


def test_every_response_header_the_api_documents_is_in_the_readme(
    openapi: dict[str, Any],
) -> None:
    """``Broker-Applied`` (provisioning, a new password and a revocation answer once the
    broker has the change; ``false`` after 5 s) was only in the OpenAPI document and the
    device contract: a newcomer provisioning over the API never learned when a unit may
    connect."""
    headers = {
        name
        for operations in openapi["paths"].values()
        for operation in operations.values()
        for response in operation.get("responses", {}).values()
        for name in response.get("headers", {})
    }
    assert "Broker-Applied" in headers
    readme = README.read_text(encoding="utf-8")
    assert {h for h in headers if f"`{h}: true`" not in readme and f"`{h}`" not in readme} == set()
