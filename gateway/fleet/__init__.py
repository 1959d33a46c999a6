"""Fleet management's adapters (issue 13): the rules and trips worker that runs the pure
core (``gateway.core.fleet``) over the committed telemetry log, one module per job.

``partitions``  which partition a VIN is in (``crc32(VIN) mod P``)
``config``      an organization's rule and trip settings, fences and fleet limits resolved
                into the core's ``RuleSettings`` / ``TripSettings``
``worker``      :class:`~gateway.fleet.worker.RulesWorker` (one step: leases, read the log
                after the cursor, evaluate per VIN in seq order, store alerts, trips, state
                and cursor in one transaction) and :class:`~gateway.fleet.worker.WorkerThread`
                (runs it in the API process)

Imports ``gateway.core.fleet``, ``gateway.store`` (the reader) and ``gateway.statedb``; imported
by the API's composition root. See docs/decisions/0014-fleet-rules-core.md, section "Per-vehicle
order", for why rules run from the log and not from MQTT messages.
"""
