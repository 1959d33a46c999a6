"""``python -m device_sim``: run a fleet of simulated units (see :mod:`device_sim.fleet`)."""

from __future__ import annotations

import asyncio
import sys

from device_sim.fleet import main

if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
