"""The InfluxDB store's shipper as a process of its own (``?shipper=process``).

Started by :class:`gateway.store.influx.InfluxTelemetryStore`, never by hand: the first
line of stdin is the store's settings as JSON, every later byte a wake-up (new samples
were committed), end of file the signal to stop (the writer closed the store or died).
It ships the spool exactly as the writer's own thread would (same lease, same
watermark), so a crash of either process loses and duplicates nothing.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from gateway.store.influx import InfluxHttp, Shipper, settings_from_json


def main() -> int:
    # Ctrl-C reaches the whole process group: the writer decides when this one stops
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    settings = settings_from_json(sys.stdin.buffer.readline())
    http = InfluxHttp(settings)
    shipper = Shipper(settings.index, http)
    fd = sys.stdin.buffer.fileno()
    try:
        while os.read(fd, 4096):
            shipper.wake()
    finally:
        shipper.close()
        http.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
