"""Who may do what: passwords, tokens, API keys, the authorization policy and rate limits.

Pure building blocks, no web framework and no database: :mod:`gateway.api` wires them to
requests and :mod:`gateway.statedb.accounts` stores what they produce.
"""
