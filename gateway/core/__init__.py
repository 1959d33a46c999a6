"""The gateway's pure core: decisions without IO.

Everything here is a function of its arguments (and, where time matters, a clock passed in):
no sockets, no files, no database, no MQTT, no FastAPI. Adapters (``ingest``, ``commands``,
``statedb``, ``store``, ``broker``, ``api``) call into the core and carry out what it
decides; the core never imports them. The import contract in ``pyproject.toml`` enforces
this. See docs/decisions/0013-architecture-step.md.

Layout:
    lifecycle.py     the state machine of one command (statuses, events, transitions)
    admission.py     whether a request becomes a command: type, parameters, a vehicle that
                     has reported, the moving rule (``schemas.commands``)
    results.py       which command a unit's answer may touch
    confirmation.py  whether telemetry confirmed a succeeded command, or the window passed
    batching.py      ingest: MQTT messages in, one IngestBatch per commit out (the Batcher)
    feedback.py      notices to a unit of what was quarantined, rate-bounded
    ratelimit.py     token buckets (commands per user and vehicle, password attempts)
    lockout.py       how long an address waits after wrong passwords
    policy.py        who may do what with which vehicle (the authorization policy)
    presence.py      online, offline or silent, as the API shows a vehicle
    seqgaps.py       which seq numbers of a vehicle never arrived (range arithmetic)
    fleet/           fleet rules: geofences, alerts, trips (docs/decisions/0014)
    clock.py         the wall clock, passed to whoever needs the time

Imports: the standard library, ``schemas``, ``gateway.errors`` (the exception tree) and
``gateway.metrics`` (counter names); nothing else of the gateway.
"""
