"""Who may do what: the building blocks without a database (password hashing and rules,
tokens and API keys, the authorization policy).

:mod:`gateway.api` wires them to requests, :mod:`gateway.statedb.accounts` stores what they
produce, and :mod:`gateway.accounts` combines the two (the first administrator, vehicle
provisioning). Nothing here imports the state database (docs/decisions/0013-architecture-step.md).
"""
