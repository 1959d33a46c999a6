"""The device simulator: pretend in-car units that speak the public device contract.

Layout:
    city.py      a small road network of central Munich shipped as data, with routing
                 (Dijkstra shortest paths, random routes); pure, no I/O
    vehicle.py   the deterministic vehicle model (kinematics, energy, cabin, faults) that
                 turns simulated time into VSS signal values and vehicle events; pure, no I/O

Everything here is sans-IO: no MQTT, no asyncio, no clocks, no global randomness. Time comes
in through ``SimulatedVehicle.step`` and randomness through the ``random.Random`` the caller
passes, so one seed gives one identical run.

Imports: only ``schemas`` and the standard library, so the simulator speaks exactly the
contract a real unit would; never ``gateway``.
"""
