"""Remote commands: from a person, through the gateway, to a vehicle, and back.

Layout:
    service.py     the command service: carries out what the core decides. It publishes
                   commands over MQTT, consumes the units' results, watches telemetry for
                   confirmation and the clock for expiry and timeouts; runs inside the API
                   process

The decisions are pure and live in the core: the lifecycle of one command
(``gateway.core.lifecycle``) and the admission of a request (``gateway.core.admission``).
Commands and their transitions live in the state database (``gateway.statedb``).
Everything the unit must understand (topics, payloads, parameters, the safety rules) is the
device contract: ``schemas.commands``. See docs/decisions/0013-architecture-step.md.

Imported by ``gateway.api``; imports the core, gmqtt, the state database and the telemetry
store.
"""
