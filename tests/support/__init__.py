"""Helpers shared by test modules: brokers, gateway processes, API clients, simulated units.

Test modules import these and never each other (tests/test_architecture.py checks it;
issue 12, docs/decisions/0013-architecture-step.md). Fixtures stay in tests/conftest.py.
"""
