"""Ingest: vehicle telemetry, events and status from the MQTT broker into the telemetry store.

Layout:
    service.py    IngestService: the MQTT adapter (gmqtt, a persistent session, shared
                  subscription); feeds each message to the core's Batcher, commits each batch
                  to the store, then acknowledges its messages and publishes feedback notices
    registry.py   VehicleRegistry: which VINs may send and their current tenure, read from
                  the state database and held in memory

The decisions are pure and live in the core: what a message becomes in a batch
(``gateway.core.batching``) and which refusals are announced to the unit
(``gateway.core.feedback``). See docs/decisions/0001-architecture.md and
docs/decisions/0013-architecture-step.md.

Imports the core, ``gateway.store`` and ``gateway.statedb``; started by ``gateway.runner``.
Submodules are imported directly (``gateway.ingest.service``); this package imports
nothing, so the core's users do not pull in gmqtt.
"""
