"""The ``telematics`` command line: every command's help names the command as a user types
it; every setting of the README's Configuration table is a flag (and an environment
variable) of the command it belongs to; ``telematics up`` refuses taken ports at once."""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import cli
from gateway.broker import free_port
from gateway.cli import build_parser, main, up_plan
from gateway.errors import GatewayError
from tests.support.processes import kill_processes_mentioning
from tests.support.waiting import wait_until

README = Path(__file__).resolve().parent.parent / "README.md"


# --- program names --------------------------------------------------------------------------


def _commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[str, ...]]:
    """Every command path of ``parser`` (``("vehicle", "add")``, ...)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name)
                yield from _commands(sub, (*path, name))


def test_every_command_names_itself_as_typed(capsys: pytest.CaptureFixture[str]) -> None:
    commands = [*_commands(build_parser()), ("sim", "scenario")]
    assert ("user", "set-password") in commands
    for command in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "--help"])
        assert exit_info.value.code == 0, command
        text = capsys.readouterr().out
        assert text.startswith(f"usage: telematics {' '.join(command)} "), (command, text[:200])
        assert "python -m" not in text.split("\n\n")[0], command


def test_every_option_says_what_it_does() -> None:
    """``telematics account add --help`` listed ``--kind {organization,private}`` with no word
    on what either is or which one is the default, ``telematics user add --help`` the five
    roles of ``--role`` likewise: a newcomer had to read the code."""
    silent = [
        (" ".join(command), action.option_strings[0])
        for command, sub in _parsers(build_parser())
        for action in sub._actions
        if action.option_strings and action.dest != "help" and not action.help
    ]
    assert silent == []


def test_every_option_with_a_default_names_it() -> None:
    """``telematics bench fleet-scale --help`` listed ``--max-lag-ms`` as "ingest lag p99
    limit" and ``--max-command-ms`` as "command p99 limit": neither the unit nor the limit a
    run uses without them (2,000 and 500 ms)."""
    unnamed = [
        (" ".join(command), action.option_strings[0], action.default)
        for command, sub in _parsers(build_parser())
        for action in sub._actions
        if action.option_strings
        and action.default not in (None, False, True, "", argparse.SUPPRESS)
        and "default" not in (action.help or "")
    ]
    assert unnamed == []


def test_vehicle_add_and_revoke_say_when_they_return(capsys: pytest.CaptureFixture[str]) -> None:
    """Both wait until the running broker has taken the change (``_wait_for_broker``), so a
    script may start or stop a unit right after them; ``revoke --help`` said the broker
    refuses the units "from its next reload (within a second)", and ``add --help`` "within a
    second", as if the caller had to wait and guess."""
    for action in ("add", "revoke"):
        with pytest.raises(SystemExit):
            main(["vehicle", action, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "returns once its broker has" in text, (action, text)
        assert "within a second" not in text, (action, text)
        assert "next reload" not in text, (action, text)


def test_pki_revoke_points_at_the_revocation_that_does_everything(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``telematics pki revoke --help`` told an operator to "reload the broker afterwards, and
    remove the vehicle's broker identity", with no word on how; under ``telematics up`` the
    vehicle's revocation does all of it (the broker sync puts its certificates on the CRL)."""
    with pytest.raises(SystemExit):
        main(["pki", "revoke", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "telematics vehicle revoke VIN" in text


def test_every_command_says_what_it_does_and_prints() -> None:
    """``telematics vehicle list --help`` (and ``user list``, ``account list``, ``account
    add``) printed usage and options only: no sentence on what they do or print. ``sim``
    hands its arguments to the simulator's own parser, which has one."""
    mute = [
        " ".join(command)
        for command, sub in _parsers(build_parser())
        if sub.add_help and not sub.description
    ]
    assert mute == []
    # and up names every kind of process it runs (the fleet worker was missing)
    up = " ".join(str(_subparser("up").description).split())
    assert "fleet worker" in up, up


def _parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every command path of ``parser`` with its parser."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _parsers(sub, (*path, name))


def test_every_data_dir_says_what_it_holds(capsys: pytest.CaptureFixture[str]) -> None:
    """``--data-dir`` holds the state database too: ``telematics api --help`` said "the
    telemetry database and the private broker's files" (an API runs no broker), and a
    newcomer who started it elsewhere found their vehicles missing."""
    for command in ("up", "gateway", "api", "fleet-worker"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        helped = text.split("--data-dir DATA_DIR ")[1].split(" --")[0]  # the option, not usage
        assert "state.db" in helped, (command, helped)


# --- the README's Configuration table --------------------------------------------------------


def configuration_rows() -> list[tuple[list[str], list[str]]]:
    """(variables, commands) per row of the README's Configuration table. A row names one
    variable or several (``TELEMATICS_X`` / ``_Y``: the shorthand stands for ``TELEMATICS_``,
    some leading parts of the first name, then ``Y``: :func:`variable_names` resolves it).
    The commands are those the row's meaning starts with (```telematics gateway`: ...``),
    else ``up``."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if not line.startswith("| `TELEMATICS_"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        names = re.findall(r"`(TELEMATICS_\w+|_\w+)`", cells[0])
        named = re.match(r"^((?:`telematics [\w-]+`(?:, )?)+):", cells[2])
        commands = re.findall(r"`telematics ([\w-]+)`", named[1]) if named else ["up"]
        rows.append((names, commands))
    return rows


def variable_names(names: list[str], known: str) -> list[str]:
    """The row's variables with shorthands spelt out: for ``_Y`` after ``TELEMATICS_A_B``
    the candidates are ``TELEMATICS_A_B_Y``, ``TELEMATICS_A_Y``, ``TELEMATICS_Y``; the first
    one ``known`` (a command's help) mentions. A shorthand that names nothing fails."""
    first, out = names[0], [names[0]]
    parts = first[len("TELEMATICS_") :].split("_")
    for short in names[1:]:
        if short.startswith("TELEMATICS_"):  # written out
            out.append(short)
            continue
        candidates = [
            "_".join(["TELEMATICS", *parts[:keep]]) + short for keep in range(len(parts), -1, -1)
        ]
        found = [c for c in candidates if re.search(rf"\b{c}\b", known)]
        assert found, f"{first} / {short}: none of {candidates} is documented"
        out.append(found[0])
    return out


def test_the_table_is_read_as_written() -> None:
    rows = {tuple(names): commands for names, commands in configuration_rows()}
    up_help = _subparser("up").format_help()
    assert variable_names(["TELEMATICS_API_HOST", "_PORT"], up_help)[1] == "TELEMATICS_API_PORT"
    assert variable_names(["TELEMATICS_MQTT_USERNAME", "_PASSWORD_FILE"], up_help) == [
        "TELEMATICS_MQTT_USERNAME",
        "TELEMATICS_MQTT_PASSWORD_FILE",
    ]
    assert variable_names(["TELEMATICS_ACCESS_TOKEN_TTL", "_REFRESH_TOKEN_TTL"], up_help) == [
        "TELEMATICS_ACCESS_TOKEN_TTL",
        "TELEMATICS_REFRESH_TOKEN_TTL",
    ]
    assert rows[("TELEMATICS_CLIENT_ID",)] == ["gateway"]
    assert rows[("TELEMATICS_DATA_DIR",)] == ["up"]
    assert rows[("TELEMATICS_FLEET_NICE",)] == ["up", "fleet-worker"]
    assert len(rows) >= 15


def _subparser(command: str) -> argparse.ArgumentParser:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[command]
    raise AssertionError(command)


#: each bucket of the invitation limit (``context.invitations.acquire(f"<bucket>...``)
#: and the words the README row and ``--help`` use for it
INVITATION_LIMIT_BUCKETS = {
    "user:": "invitations",
    "transfer:": "transfer offers",
    "claim:": "claims",
    "api_key_create:": "API keys",
    "user_create:": "users created",
    "vehicle_change:": "vehicle changes",
}


def test_the_invitation_limit_says_everything_it_limits() -> None:
    """The README row said "invitations to share a vehicle" only, while the same limit
    bounds transfers, claims, API-key and user creation (each in a bucket of its own)."""
    routes = Path(cli.__file__).resolve().parent.parent / "api" / "routes"
    code = "\n".join(p.read_text(encoding="utf-8") for p in routes.glob("*.py"))
    used = set(re.findall(r'invitations\.(?:acquire|peek)\(f"([a-z_]+:)', code))
    used |= set(re.findall(r'key = f"([a-z_]+:)user:', code))  # users.py: acquire(key)
    assert used == set(INVITATION_LIMIT_BUCKETS), used
    [row] = [
        line
        for line in README.read_text(encoding="utf-8").splitlines()
        if line.startswith("| `TELEMATICS_INVITATION_LIMIT`")
    ]
    action = next(a for a in _subparser("api")._actions if "--invitation-limit" in a.option_strings)
    for words in INVITATION_LIMIT_BUCKETS.values():
        assert words in row, words
        assert words in " ".join(str(action.help).split()), words


def _sample(action: argparse.Action) -> tuple[str, object]:
    """A value to put into the action's environment variable, and what the flag then holds."""
    if isinstance(action, argparse._StoreTrueAction):
        return "1", True
    if isinstance(action, argparse.BooleanOptionalAction):  # on by default: turned off
        return "0", False
    if action.choices:
        choice = list(action.choices)[-1]
        return str(choice), choice
    if action.type is int:
        return "4321", 4321
    if action.type is float:
        return "12.5", 12.5
    if action.type is Path:
        return "/tmp/some/file", Path("/tmp/some/file")
    return "example-value", "example-value"


@pytest.mark.parametrize(
    ("names", "commands"),
    configuration_rows(),
    ids=[" / ".join(v) for v, _ in configuration_rows()],
)
def test_every_configuration_setting_is_a_flag_and_a_variable(
    names: list[str], commands: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each variable is named in the help of a flag of each command the row is about, and
    setting it changes that flag's default; passwords are variables only (never a flag: ps
    shows command lines), named in the command's help."""
    for command in commands:
        parser = _subparser(command)
        help_text = parser.format_help()
        for variable in variable_names(names, help_text):
            assert variable in help_text, f"telematics {command} --help does not name {variable}"
            if variable.endswith("PASSWORD"):
                assert not any(
                    a.option_strings and f"env {variable}" in (a.help or "")
                    for a in parser._actions
                ), f"{variable} must not have a flag"
                continue
            matches: list[argparse.Action | None] = [
                a
                for a in parser._actions
                if a.option_strings and re.search(rf"\benv {variable}\b", a.help or "")
            ]
            (action,) = matches or [None]
            assert action is not None, f"no flag of telematics {command} says 'env {variable}'"
            raw, expected = _sample(action)
            monkeypatch.setenv(variable, raw)
            parsed = _subparser(command).parse_args([])
            monkeypatch.delenv(variable)
            assert getattr(parsed, action.dest) == expected, (command, variable)


# --- telematics up and taken ports -----------------------------------------------------------


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize("which", ["--api-port", "--mqtt-port", "--tls-port"])
def test_up_names_a_taken_port_and_its_flag_at_once(
    which: str, taken_port: int, tmp_path: Path
) -> None:
    ports = {flag: str(free_port()) for flag in ("--api-port", "--mqtt-port", "--tls-port")}
    ports[which] = str(taken_port)
    argv = ["up", "--demo", "--data-dir", str(tmp_path / "data")]
    argv += [x for flag, port in ports.items() for x in (flag, port)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMATICS_")}
    started = time.monotonic()
    up = subprocess.Popen(
        [sys.executable, "-m", "gateway", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        _, stderr = up.communicate(timeout=30)
    except subprocess.TimeoutExpired:  # it started after all: stop all of it
        os.killpg(up.pid, signal.SIGKILL)
        _, stderr = up.communicate()
    finally:
        kill_processes_mentioning(tmp_path)
    elapsed = time.monotonic() - started
    assert up.returncode == 2, stderr
    assert f"port {taken_port} on 127.0.0.1 is already in use" in stderr
    variable = "TELEMATICS_" + which[2:].replace("-", "_").upper()
    assert f"{which} PORT (env {variable})" in stderr
    assert not (tmp_path / "data").exists()  # nothing was started or created
    assert elapsed < 10, elapsed  # in practice well under a second after Python starts


def test_up_port_check_takes_under_a_second_and_catches_clashes() -> None:
    started = time.monotonic()
    with pytest.raises(GatewayError, match="--api-port PORT"):
        cli.check_up_ports([("the API", "127.0.0.1", 1, "--api-port PORT")], lambda h, p: True)
    with pytest.raises(GatewayError, match="cannot both listen on port 5"):
        cli.check_up_ports(
            [("the API", "127.0.0.1", 5, "--api-port"), ("the broker", "127.0.0.1", 5, "-m")],
            lambda h, p: False,
        )
    cli.check_up_ports([("the API", "127.0.0.1", free_port(), "--api-port")])
    assert time.monotonic() - started < 1.0


def test_up_hands_its_api_and_gateway_settings_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """The flags of up that belong to the API or the gateways reach their command lines."""
    args = build_parser().parse_args(
        [
            "up",
            "--access-token-ttl",
            "60",
            "--login-limit",
            "5/min",
            "--no-registration",
            "--auth-secret-file",
            "/tmp/secret",
            "--batch-delay-ms",
            "20",
            "--share-group",
            "g2",
        ]
    )
    api, gateway = up_plan.forwarded(args)
    assert api[api.index("--access-token-ttl") + 1] == "60"
    assert api[api.index("--login-limit") + 1] == "5/min"
    assert "--no-registration" in api
    assert api[api.index("--auth-secret-file") + 1] == "/tmp/secret"
    assert gateway[gateway.index("--batch-delay-ms") + 1] == "20.0"
    assert gateway[gateway.index("--share-group") + 1] == "g2"
    bad = build_parser().parse_args(["up", "--user-command-limit", "fast"])
    with pytest.raises(ValueError, match="fast"):
        up_plan.forwarded(bad)


def test_mqtt_url_says_what_it_is_for_and_its_default() -> None:
    """A newcomer read ``--mqtt-url MQTT_URL  broker to use, mqtt://host:port`` under
    ``telematics up --help``: not that it replaces the private broker (which then needs
    closing as the README says), nor what happens without it; ``api --help`` named no default
    either, and neither said that the port may be left out or that mqtts:// is refused."""
    for command, purpose in (
        ("up", "instead of starting the private one"),
        ("api", "remote commands are off"),
        ("gateway", "the broker to ingest from"),
    ):
        (action,) = [a for a in _subparser(command)._actions if "--mqtt-url" in a.option_strings]
        text = " ".join((action.help or "").split())
        assert purpose in text, (command, text)
        for words in ("mqtt://host[:port]", "port 1883 if left out", "default: ", "mqtts://"):
            assert words in text, (command, words, text)
    (up_url,) = [a for a in _subparser("up")._actions if "--mqtt-url" in a.option_strings]
    assert "Bringing your own broker" in " ".join((up_url.help or "").split())


def test_sim_help_points_at_scenarios(capsys: pytest.CaptureFixture[str]) -> None:
    """``telematics --help`` says "scenarios: telematics sim scenario --help", but ``telematics
    sim --help``, where a newcomer reading about the simulator looks, never named the
    ``scenario`` subcommand: its usage line and options are the fleet's only."""
    with pytest.raises(SystemExit):
        main(["sim", "--help"])
    text = capsys.readouterr().out
    assert "telematics sim scenario --help" in text
    assert "telematics sim scenario device_sim/scenarios/" in text


def test_a_lost_broker_connection_is_one_line_not_a_traceback() -> None:
    """Provisioning the README's 1,000 simulator vehicles restarts the broker; the demo's
    terminal then showed gmqtt's ``[EXC: CONN LOST]`` with a Python traceback, which looked
    like a crash of the gateway. It is one line with the reason (DEBUG keeps the traceback)."""
    import io
    import logging

    from gateway.cli.options import setup_logging

    logger = logging.getLogger("gmqtt.mqtt.protocol")
    saved = list(logger.filters)
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    try:
        setup_logging("INFO")
        try:
            raise ConnectionResetError(104, "Connection reset by peer")
        except ConnectionResetError as exc:
            logger.warning("[EXC: CONN LOST]", exc_info=exc)
    finally:
        logger.removeHandler(handler)
        logger.filters[:] = saved
    text = out.getvalue()
    assert "Traceback" not in text, text
    assert text == (
        "WARNING gmqtt.mqtt.protocol: [EXC: CONN LOST] ConnectionResetError: "
        "[Errno 104] Connection reset by peer\n"
    )


def test_every_positional_argument_says_what_it_is() -> None:
    """``telematics vehicle add --help`` listed ``VIN`` under "positional arguments" with
    nothing beside it (nor ``user add``'s ``email``, ``account add``'s ``name``, ``pki
    client``'s ``VIN``): a newcomer could not tell that several VINs may be given at once,
    or that an account's name need not be unique."""
    silent = [
        (" ".join(command), action.dest)
        for command, sub in _parsers(build_parser())
        for action in sub._actions
        if not action.option_strings
        and not isinstance(action, argparse._SubParsersAction)
        and not action.help
    ]
    assert silent == []


def _up(tmp_path: Path, data: Path, *extra: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMATICS_")}
    ports = ["--api-port", str(free_port()), "--mqtt-port", str(free_port())]
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "up", "--data-dir", str(data), *ports, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )


def test_a_second_up_on_the_same_data_directory_stops_at_once(tmp_path: Path) -> None:
    """Decision 0054: a newcomer who ran `telematics up` twice from the same directory, the
    second on other ports, got two installations on one data directory: a second private
    broker on the first one's persistence file (service sessions written into it while the
    first broker ran), two gateways named telematics-gateway-1 on one telemetry store, and
    the first one's health reports deleted. The second now stops before touching anything
    and says which process holds the directory and how to run a second installation."""
    data = tmp_path / "data"
    first = _up(tmp_path, data)
    try:
        health = data / "health"
        wait_until(lambda: any(health.glob("*.json")), timeout=120, what="its health reports")
        reports = sorted(p.name for p in health.glob("*.json"))
        second = _up(tmp_path, data)
        try:
            _, stderr = second.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # it started after all
            os.killpg(second.pid, signal.SIGKILL)
            _, stderr = second.communicate()
        assert second.returncode == 2, stderr
        assert f"another telematics up (pid {first.pid}) runs on the data directory" in stderr
        assert "--data-dir" in stderr
        assert first.poll() is None
        assert sorted(p.name for p in health.glob("*.json")) == reports  # left alone
    finally:
        os.killpg(first.pid, signal.SIGINT)
        try:
            first.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(first.pid, signal.SIGKILL)
            first.communicate()
        kill_processes_mentioning(tmp_path)


def test_a_data_directory_that_cannot_be_made_is_one_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Decision 0054: `telematics up --data-dir` on a read-only file system, or under a
    file, ended in a Python traceback (OSError from mkdir); it says what and where."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    ports = ["--api-port", str(free_port()), "--mqtt-port", str(free_port())]
    assert main(["up", "--data-dir", str(blocker / "data"), *ports]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"telematics: error: Not a directory: {blocker / 'data'}" in err
    assert "--data-dir DIR (env TELEMATICS_DATA_DIR)" in err


def test_a_full_disk_at_start_is_one_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decision 0054: on a full file system (a 300 KB tmpfs) `telematics up` died in the
    state database's first migration with a 40-line SQLAlchemy traceback ending in
    "database or disk is full". A full disk cannot be made in a test: the migration's
    error, as SQLAlchemy raised it there, stands in for it."""
    import sqlite3

    import sqlalchemy.exc

    from gateway.statedb.database import StateDatabase

    def full(self: StateDatabase) -> None:
        cause = sqlite3.OperationalError("database or disk is full")
        raise sqlalchemy.exc.OperationalError("COMMIT", {}, cause) from cause

    monkeypatch.setattr(StateDatabase, "upgrade", full)
    data = tmp_path / "data"
    ports = ["--api-port", str(free_port()), "--mqtt-port", str(free_port())]
    assert main(["up", "--data-dir", str(data), *ports]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "telematics: error: SQLite: database or disk is full" in err
    assert f"the data directory {data} must be writable and have room" in err


@pytest.mark.parametrize("host", ["127.0.0.1", "no-such-host.invalid"])
def test_a_gateway_that_cannot_reach_its_broker_says_so_in_one_line(
    host: str, tmp_path: Path
) -> None:
    """Decision 0054: `telematics up --mqtt-url` with a wrong port or host printed a
    50-line traceback from the gateway (ConnectionRefusedError, socket.gaierror) on every
    restart, 1, 2, 4 ... s apart. One line names the URL, the reason and the flag."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMATICS_")}
    argv = ["gateway", "--data-dir", str(tmp_path / "data"), "--mqtt-url", f"mqtt://{host}:{port}"]
    done = subprocess.run(
        [sys.executable, "-m", "gateway", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert f"cannot reach the MQTT broker mqtt://{host}:{port}: " in done.stderr
    assert "--mqtt-url URL (env TELEMATICS_MQTT_URL)" in done.stderr
