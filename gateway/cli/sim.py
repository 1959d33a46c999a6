"""``telematics sim ...`` is ``python -m device_sim ...``; ``telematics sim scenario FILE
...`` is ``python -m device_sim.scenario FILE ...``.

The simulator's entry point is looked up by module name when the command runs, never
imported by the gateway's code: the simulator speaks only the public device contract, and
the gateway does not depend on it (``telematics up --demo`` starts it as a child process).
In this process, so its ``--help`` and its exit status are those of any other command. See
docs/decisions/0013-architecture-step.md.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, cast

from gateway.settings import Environment

__all__ = ["SIMULATOR_MODULE", "add_parser", "run_simulator"]

#: what ``python -m`` runs for ``telematics sim`` (and ``telematics up --demo``)
SIMULATOR_MODULE = "device_sim"
#: the modules whose ``main(argv)`` ``telematics sim`` and ``telematics sim scenario`` run
_FLEET_MODULE = "device_sim.fleet"
_SCENARIO_MODULE = "device_sim.scenario"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], env: Environment) -> None:
    # a placeholder for the help listing: main() hands `sim ...` to the simulator as it is
    sub.add_parser(
        "sim",
        help="run the device simulator (telematics sim --help; scenarios: telematics sim "
        "scenario --help)",
        add_help=False,
    )


_Main = Callable[[list[str]], Coroutine[Any, Any, int]]


def _entry_point(module: str) -> _Main:
    return cast(_Main, importlib.import_module(module).main)


def run_simulator(argv: Sequence[str]) -> int:
    """Run the simulator's command line ``argv`` (``scenario ...``: a scenario's)."""
    if argv[:1] == ["scenario"]:
        scenario = _entry_point(_SCENARIO_MODULE)
        try:
            return int(asyncio.run(scenario(list(argv[1:]))))
        except BrokenPipeError:  # `--dump | head`: the reader has all it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
    return int(asyncio.run(_entry_point(_FLEET_MODULE)(list(argv))))
