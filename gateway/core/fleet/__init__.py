"""Fleet management's pure core (issue 13): geometry, geofences, rules and trips.

Everything here is a function of its arguments: samples and the current time come in as
values, decisions (alert changes, trips) go out as values. Storage, the API, notifications
and the per-vehicle ordering of samples are adapters built on top of it later; see
docs/decisions/0014-fleet-rules-core.md.

Modules: :mod:`.geo` (distances, shapes, GeoJSON), :mod:`.geofence` (enter/exit with
hysteresis, active windows), :mod:`.signals` (the input types and the catalog signals
used), :mod:`.rules` (alerts), :mod:`.trips` (trips and stops).
"""
