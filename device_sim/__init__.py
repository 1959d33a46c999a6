"""The device simulator: pretend in-car units that speak the public device contract.

Layout:
    city.py      a small road network of central Munich shipped as data, with routing
                 (Dijkstra shortest paths, random routes); pure, no I/O
    vehicle.py   the deterministic vehicle model (kinematics, energy, cabin, faults) that
                 turns simulated time into VSS signal values and vehicle events; pure, no I/O
    unit.py      one in-car unit on MQTT 5 (gmqtt): Last Will, persistent session,
                 store-and-forward buffer uploaded as batches, reconnect with backoff
    faults.py    faults on demand (malformed JSON, wrong types, clock skew, ...), pure
    fleet.py     many units from one seed, and the ``python -m device_sim`` command
                 (``telematics sim``)
    procs.py     ``--procs N``: the fleet spread over processes, summaries merged
    stats.py     what a run measures (counters, latency histogram, CPU and memory) and
                 how the shards of a fleet add up; shared by ``fleet`` and ``procs``
    console.py   what a person sees: live progress, the closing line, the JSON summary,
                 why a run failed; shared by ``fleet`` and ``procs`` (neither imports
                 the other: docs/decisions/0013-architecture-step.md)
    credentials.py  the unit credentials file written at provisioning (each unit's MQTT
                 user name and password or client certificate, the gateway's public key)
    scenario.py  scenario files (TOML: vehicles, seed, start, time acceleration, scripted
                 events); ``render`` gives the exact stream, ``play`` publishes it
    scenarios/   example scenario files
    loadgen.py   a minimal MQTT 5 publisher for benchmarks (many connections, little CPU)

The models are sans-IO: time comes in through ``SimulatedVehicle.step`` and randomness
through the ``random.Random`` the caller passes, so one seed gives one identical run; MQTT
and clocks live only in ``unit``, ``fleet`` and ``loadgen``.

Imports: only ``schemas``, gmqtt, rich and the standard library, so the simulator speaks exactly
the contract a real unit would; never ``gateway``.
"""
