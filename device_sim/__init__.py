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
                 (``telematics sim``): live progress, JSON summary
    procs.py     ``--procs N``: the fleet spread over processes, summaries merged
    credentials.py  the unit credentials file written at provisioning (each unit's MQTT
                 user name and password or client certificate, the gateway's public key)
    scenario.py  scenario files (TOML: vehicles, seed, start, time acceleration, scripted
                 events); ``render`` gives the exact stream, ``play`` publishes it
    scenarios/   example scenario files
    loadgen.py   a minimal MQTT 5 publisher for benchmarks (many connections, little CPU)

The models are sans-IO: time comes in through ``SimulatedVehicle.step`` and randomness
through the ``random.Random`` the caller passes, so one seed gives one identical run; MQTT
and clocks live only in ``unit``, ``fleet`` and ``loadgen``.

Imports: only ``schemas``, gmqtt and the standard library, so the simulator speaks exactly
the contract a real unit would; never ``gateway``.
"""
