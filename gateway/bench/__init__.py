"""Benchmarks run by ``telematics bench ...``. Each starts what it measures (a private
broker, the gateway as a real child process), measures a baseline in the same run, and
prints its figures (with ``--json``, one JSON object on the last line)."""
