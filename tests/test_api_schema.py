"""Property test of the whole OpenAPI document: schemathesis generates requests for every
operation (valid ones and invalid ones), authenticated as each role, and every answer must
be a documented status with a body, content type and headers that match the document; no
5xx ever.

The world is the authorization table's (tests/test_authz.py: organizations A and B, a
private account, a real broker for the command service, everybody logged in for real).
Requests go through that world's client, so they reach the app whose lifespan (state
database, command service) is running. The number of examples per operation and role is
bounded (``EXAMPLES``) so the whole run stays around a minute; raise it locally with
``TELEMATICS_SCHEMA_EXAMPLES=200`` for a deeper search.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks
from schemathesis.core.failures import AcceptedNegativeData, FailureGroup

from gateway.api import ApiSettings, create_app
from tests.support.authz import World, open_world

EXAMPLES = int(os.environ.get("TELEMATICS_SCHEMA_EXAMPLES", "5"))
#: the personas, the administrator last: its writes (disabling users, changing roles) must
#: not take the other personas' rights away before their turn
ROLES = ("driver", "owner", "fleet_viewer", "fleet_manager", "admin")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with open_world(tmp_path_factory.mktemp("authz")) as opened:
        yield opened


schema = schemathesis.openapi.from_dict(
    create_app(ApiSettings(Path("unused.db"))).openapi()
    # the live streams never end by themselves (an in-process client would wait forever); its
    # answers are checked by tests/test_notifications.py and the authorization table
).exclude(path=["/v1/stream", "/v1/positions/stream"])

#: what "contradicts the schema" means: an undocumented status, content type, header or
#: body, or a server error. (Checks that re-send a request on their own are left out: they
#: would need a network server, and the world's client is an in-process one.)
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
]


def _send(world: World, case: Any, persona: str) -> Any:
    """Send ``case`` through the world's client, as ``persona``. The persona's credentials
    go into the case itself, so schemathesis knows the Authorization it generated (maybe an
    invalid one, for a negative case) was replaced: otherwise a case whose only invalid
    part was that header looked like invalid data the API accepted (seen in a full run)."""
    case.headers = {**(case.headers or {}), **world.headers[persona]}
    kwargs = case.as_transport_kwargs(base_url="http://testserver")
    assert not kwargs.get("cookies"), "the API documents no cookie"
    headers = kwargs.get("headers") or {}
    data = kwargs.get("data")
    content = None
    if isinstance(data, bytes | str):
        content, data = data, None
    return world.client.request(
        kwargs["method"],
        kwargs["url"],
        params=kwargs.get("params"),
        headers=headers,
        json=kwargs.get("json"),
        data=data,
        content=content,
        files=kwargs.get("files"),
    )


@pytest.mark.slow
@pytest.mark.parametrize("persona", ROLES)
@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_answers_as_documented(world: World, case: Any, persona: str) -> None:
    response = _send(world, case, persona)
    try:
        case.validate_response(response, checks=CHECKS)
    except FailureGroup as group:
        if not _only_an_empty_cursor_accepted(group, response):
            raise


def _only_an_empty_cursor_accepted(group: FailureGroup, response: Any) -> bool:
    """Whether the only finding is "invalid data accepted" for a request whose cursor
    reached the API as ``cursor=`` (empty): a value schemathesis generated as invalid (not
    a string) that its serialization turned into the empty string, which is the documented
    first page (the README's paging loop starts with it). Seen deterministically in full
    runs on ``GET /v1/integrations``; any other finding still fails."""
    sent = dict(response.request.url.params.multi_items())
    return sent.get("cursor") == "" and all(
        isinstance(failure, AcceptedNegativeData) for failure in group.exceptions
    )
