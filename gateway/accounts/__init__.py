"""Account administration that needs the state database: the first administrator of a new
installation, and provisioning a vehicle (its registry entry and its broker identity).

Layout:
    bootstrap.py     ensure_first_admin / print_first_admin: an installation without an
                     administrator gets one (password from the environment, or generated
                     and shown once)
    provisioning.py  provision_vehicle, rotate_vehicle_password, provision_or_rotate: the
                     registry entry and a fresh MQTT password (only its Mosquitto hash kept)

Here, not in ``gateway.auth``, because they use the state database: ``gateway.auth`` holds
the building blocks without one (password hashing, tokens), the state database stores what
they produce, and this package puts the two together (docs/decisions/0013-architecture-step.md).

Imports ``gateway.auth``, ``gateway.broker.auth`` (the Mosquitto password hash) and
``gateway.statedb``; imported by the API, the command line and ``gateway.installation``.
"""
