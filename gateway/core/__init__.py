"""The gateway's pure core: decisions without IO.

Everything here is a function of its arguments (and, where time matters, a clock passed in):
no sockets, no files, no database, no MQTT, no FastAPI. Adapters (``ingest``, ``commands``,
``statedb``, ``store``, ``broker``, ``api``) call into the core and carry out what it
decides; the core never imports them. The import contract in ``pyproject.toml`` enforces
this. See docs/decisions/0013-architecture-step.md.
"""
