"""The API's conventions, checked over the whole OpenAPI document and on real requests:

* every list answers ``{"items": [...], "next": cursor | null}`` and pages with ``limit``
  and ``cursor``; the cursor walks a list without skipping or repeating an item;
* every time has its ``_iso`` twin (and only times have one), null together;
* a response has exactly the keys its schema lists (``transitions`` only in a command's
  detail, never ``null`` in a list);
* a 405 names every method of the path in ``Allow``;
* logging out takes RFC 7009's form body as well as JSON, and a body the route cannot read
  says which content type it wants;
* ``/docs`` loads nothing from outside the API, and its assets are there;
* a provisioned vehicle is listed, and readable, before it first reports;
* the description says what the API is (it said "read access").
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from pydantic import BaseModel, TypeAdapter, ValidationError

import gateway.api
from gateway.api import ApiSettings
from gateway.api.limits import BodyLimit, body_limit, document_body_limits
from gateway.store import IngestBatch, open_store
from schemas import Sample
from tests.support.api import TEST_ADMIN_EMAIL, TEST_ADMIN_PASSWORD, admin_client

#: list operations with no paging parameters: a fixed list, always one page
FIXED_LISTS = {
    ("get", "/v1/command-types"),
    # issue 16: few and bounded (partners, the plans of the models, a partner's vehicles)
    ("get", "/v1/service-partners"),
    ("get", "/v1/service-partners/vehicles"),
    ("get", "/v1/service-plans"),
}
ASSETS = Path(gateway.api.__file__).parent / "static" / "swagger-ui"
TIME_NAMES = re.compile(r"^(ts|start|end|first_seen|last_seen|[a-z_]+_at)$")


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with admin_client(ApiSettings(tmp_path / "telemetry.db")) as c:
        yield c


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    db = tmp_path_factory.mktemp("spec") / "telemetry.db"
    document: dict[str, Any] = gateway.api.create_app(ApiSettings(db)).openapi()
    return document


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _ok_schema(spec: dict[str, Any], op: dict[str, Any]) -> dict[str, Any] | None:
    for code in ("200", "201"):
        content = op["responses"].get(code, {}).get("content", {})
        if "application/json" in content:
            return _resolve(spec, content["application/json"]["schema"])
    return None


# --- one list convention ------------------------------------------------------------


def _list_operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """Every read whose answer is a list, or holds one at the top level."""
    found = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            schema = _ok_schema(spec, op) if method == "get" else None
            if schema is None:
                continue
            if schema.get("type") == "array" or any(
                _resolve(spec, p).get("type") == "array"
                for p in schema.get("properties", {}).values()
            ):
                found.append((method, path, schema))
    return found


#: a page that also says one thing besides its items, named so no other can: a vehicle's
#: trips and the trip it is on now (not stored yet: no place in the cursor's order; issue 13)
PAGE_EXTRAS: dict[tuple[str, str], set[str]] = {("get", "/v1/trips"): {"in_progress"}}


def test_every_list_is_items_and_a_cursor(spec: dict[str, Any]) -> None:
    lists = _list_operations(spec)
    # the catalog and who-am-I are documents that hold lists, not lists: named here so a
    # new list cannot slip through as one of them
    documents = {
        ("get", "/v1/catalog"),
        ("get", "/v1/me"),
        ("get", "/v1/commands/{command_id}"),
        ("get", "/v1/vehicles/{vin}/history"),
        # reports: a document of a date range (daily rows and totals, JSON or CSV)
        ("get", "/v1/reports/vehicles"),
        ("get", "/v1/reports/drivers"),
        ("get", "/v1/reports/utilization"),
        ("get", "/v1/reports/faults"),
        # fault-code analytics across the installation: one document of a range (issue 16)
        ("get", "/v1/analytics/fault-codes"),
        # a bulk command: the job with its first refusals (counts.refused has them all)
        ("get", "/v1/command-jobs/{job_id}"),
        # a vehicle's lifecycle: its state with the history of its changes
        ("get", "/v1/vehicles/{vin}/lifecycle"),
    }
    checked = 0
    for method, path, schema in lists:
        assert schema.get("type") != "array", f"{method} {path} answers a bare array"
        if (method, path) in documents - {("get", "/v1/vehicles/{vin}/history")}:
            continue
        if (method, path) not in documents:
            extra = PAGE_EXTRAS.get((method, path), set())
            assert set(schema["properties"]) == {"items", "next"} | extra, (method, path)
        assert set(schema["required"]) >= {"items", "next"}, (method, path)
        params = {p["name"]: p for p in spec["paths"][path][method].get("parameters", [])}
        if (method, path) in FIXED_LISTS:
            assert not {"limit", "cursor"} & set(params), (method, path)
        else:
            assert {"limit", "cursor"} <= set(params), (method, path)
            limit = params["limit"]["schema"]
            assert limit["minimum"] == 1, (method, path)
            assert limit["maximum"] <= 10_000, (method, path)
            assert params["cursor"]["schema"]["anyOf"][0]["maxLength"] <= 200, (method, path)
        checked += 1
    assert checked >= 10  # vehicles, history, quarantine, commands, types, keys, accounts,
    # users, grants, audit


def test_every_integer_parameter_is_bounded(spec: dict[str, Any]) -> None:
    def integers(schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
        schema = _resolve(spec, schema)
        if schema.get("type") == "integer":
            yield schema
        for sub in schema.get("anyOf", []):
            yield from integers(sub)
        for prop in schema.get("properties", {}).values():
            yield from integers(prop)

    found = 0
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            schemas = [p["schema"] for p in op.get("parameters", [])]
            for content in op.get("requestBody", {}).get("content", {}).values():
                schemas.append(content["schema"])
            for schema in schemas:
                for integer in integers(schema):
                    found += 1
                    assert "maximum" in integer, (method, path, schema)
                    assert "minimum" in integer, (method, path, schema)
    assert found >= 15


def test_a_cursor_walks_every_item_once(client: TestClient) -> None:
    created = [
        client.post("/v1/accounts", json={"kind": "organization", "name": f"org {i}"}).json()["id"]
        for i in range(7)
    ]
    seen: list[int] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        body = client.get("/v1/accounts", params=params).json()
        assert set(body) == {"items", "next"}
        seen += [a["id"] for a in body["items"]]
        cursor = body["next"]
        if cursor is None:
            break
    assert seen == sorted(seen)
    assert set(created) <= set(seen)
    assert len(seen) == len(set(seen))
    # a cursor belongs to its list
    users = client.get("/v1/users", params={"limit": 1}).json()
    r = client.get("/v1/accounts", params={"cursor": users["next"] or "eA"})
    assert r.status_code == 422, r.text


# --- time twins -------------------------------------------------------------------------


def test_every_time_has_an_iso_twin(spec: dict[str, Any]) -> None:
    checked = 0
    for name, schema in spec["components"]["schemas"].items():
        props = schema.get("properties", {})
        for prop, prop_schema in props.items():
            if prop.endswith("_iso"):
                assert prop.removesuffix("_iso") in props, f"{name}.{prop} twins nothing"
                continue
            types = {s.get("type") for s in prop_schema.get("anyOf", [prop_schema])}
            if TIME_NAMES.match(prop) and "integer" in types:
                twin = props.get(f"{prop}_iso")
                assert twin is not None, f"{name}.{prop} has no {prop}_iso"
                twin_types = {s.get("type") for s in twin.get("anyOf", [twin])}
                assert ("null" in types) == ("null" in twin_types), f"{name}.{prop}"
                assert (prop in schema.get("required", [])) == (
                    f"{prop}_iso" in schema.get("required", [])
                ), f"{name}.{prop}"
                checked += 1
    assert checked >= 20


def test_the_description_says_what_the_api_is(spec: dict[str, Any]) -> None:
    for text in (spec["info"]["description"], gateway.api.__doc__ or ""):
        assert "read access" not in text.lower()
        assert "read-only json view" not in text.lower()
    assert "command" in spec["info"]["description"].lower()
    assert '"next"' in spec["info"]["description"]


# --- 405 --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "url", "allowed"),
    [
        ("PUT", "/v1/vehicles", "GET, POST"),
        ("PATCH", "/v1/vehicles/WVWZZZ1JZXW000001", "DELETE, GET"),
        ("DELETE", "/v1/users", "GET, POST"),
        ("POST", "/v1/catalog", "GET"),
        ("PUT", "/v1/users/7", "GET, PATCH"),
    ],
)
def test_405_lists_every_method_of_the_path(
    client: TestClient, method: str, url: str, allowed: str
) -> None:
    r = client.request(method, url)
    assert r.status_code == 405, r.text
    assert r.headers["allow"] == allowed
    error = r.json()["error"]
    assert error["code"] == "method_not_allowed"
    assert allowed in error["message"]


# --- logging out (RFC 7009) and bodies the route cannot read ------------------------------


def _login(client: TestClient) -> dict[str, Any]:
    r = client.post(
        "/v1/auth/token",
        data={
            "grant_type": "password",
            "username": TEST_ADMIN_EMAIL,
            "password": TEST_ADMIN_PASSWORD,
        },
    )
    assert r.status_code == 200, r.text
    tokens: dict[str, Any] = r.json()
    return tokens


def _refresh_works(client: TestClient, refresh_token: str) -> bool:
    r = client.post(
        "/v1/auth/token", data={"grant_type": "refresh_token", "refresh_token": refresh_token}
    )
    return r.status_code == 200


def test_revoke_takes_the_rfc_7009_form_body(client: TestClient) -> None:
    tokens = _login(client)
    r = client.post(
        "/v1/auth/revoke",
        data={"token": tokens["refresh_token"], "token_type_hint": "refresh_token"},
    )
    assert r.status_code == 204, r.text
    assert not _refresh_works(client, tokens["refresh_token"])
    # without the hint too, and for an unknown token (RFC 7009: not an error)
    tokens = _login(client)
    assert (
        client.post("/v1/auth/revoke", data={"token": tokens["refresh_token"]}).status_code == 204
    )
    assert not _refresh_works(client, tokens["refresh_token"])
    assert client.post("/v1/auth/revoke", data={"token": "unknown"}).status_code == 204


def test_revoke_still_takes_json(client: TestClient) -> None:
    tokens = _login(client)
    r = client.post("/v1/auth/revoke", json={"refresh_token": tokens["refresh_token"]})
    assert r.status_code == 204, r.text
    assert not _refresh_works(client, tokens["refresh_token"])


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"content": b"token=x", "headers": {"Content-Type": "text/plain"}},
        {"data": {"nothing": "here"}},
    ],
)
def test_revoke_says_what_to_send(client: TestClient, kwargs: dict[str, Any]) -> None:
    r = client.post("/v1/auth/revoke", **kwargs)
    assert r.status_code == 422, r.text
    message = r.json()["error"]["message"]
    assert "application/x-www-form-urlencoded" in message
    assert "application/json" in message


@pytest.mark.parametrize(
    "kwargs",
    [
        {"content": b'{"email": "a@b.c", "password": "x", "name": "n"}'},  # no Content-Type
        {"data": {"email": "a@b.c", "password": "x", "name": "n"}},  # a form
        {"content": b"\xff\xfe", "headers": {"Content-Type": "application/json"}},  # not UTF-8
    ],
)
def test_a_body_the_route_cannot_read_names_the_content_type(
    client: TestClient, kwargs: dict[str, Any]
) -> None:
    r = client.post("/v1/auth/register", **kwargs)
    assert r.status_code == 422, r.text
    message = r.json()["error"]["message"]
    assert "Content-Type: application/json" in message
    assert "valid dictionary" not in message.split("Content-Type")[-1]


# --- /docs offline ------------------------------------------------------------------------


def test_the_docs_page_cannot_be_framed(client: TestClient) -> None:
    """Security review 4: ``/docs`` was the one page without the dashboard's framing and
    sniffing headers (a page that calls the API with the visitor's session cookie)."""
    page = client.get("/docs")
    assert page.status_code == 200
    assert page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"


def test_docs_load_nothing_from_outside(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    urls = re.findall(r"""(?:src|href|url)\s*[:=]\s*['"]([^'"]+)['"]""", page.text)
    assert urls, page.text
    assert not [u for u in urls if re.match(r"(https?:)?//", u)], urls
    assert "validatorUrl" in page.text  # the online validator badge is off
    for url in urls:
        if url.startswith("/docs/static/"):
            asset = client.get(url)
            assert asset.status_code == 200, url
            assert len(asset.content) > 0
    assert (
        client.get("/docs/static/swagger-ui-bundle.js")
        .headers["content-type"]
        .startswith(("application/javascript", "text/javascript"))
    )
    assert client.get("/docs/static/swagger-ui.css").headers["content-type"].startswith("text/css")
    assert client.get("/openapi.json").status_code == 200


def test_swagger_ui_ships_with_its_license() -> None:
    assert "Apache License" in (ASSETS / "LICENSE").read_text()
    assert (ASSETS / "NOTICE").is_file()
    assert re.fullmatch(r"\d+\.\d+\.\d+\n", (ASSETS / "VERSION").read_text())


# --- provisioned, never reported ----------------------------------------------------------


def test_a_provisioned_vehicle_is_listed_before_it_reports(tmp_path: Path) -> None:
    db_path = tmp_path / "telemetry.db"
    quiet, heard = "WNEVER00000000001", "WHEARD00000000001"
    with admin_client(ApiSettings(db_path)) as client:
        account = client.post("/v1/accounts", json={"kind": "organization", "name": "o"}).json()
        for vin in (quiet, heard):
            r = client.post("/v1/vehicles", json={"vin": vin, "account_id": account["id"]})
            assert r.status_code == 201, r.text
        store = open_store(db_path)
        try:
            store.commit(
                IngestBatch(received_at=5, samples=[Sample(heard, 1, 4, {"Vehicle.Speed": 3.0})])
            )
        finally:
            store.close()
        r = client.post(
            "/v1/users",
            json={
                "email": "fm@example.com",
                "name": "fm",
                "role": "fleet_manager",
                "account_id": account["id"],
                "password": "fleet-manager-password",
            },
        )
        assert r.status_code == 201, r.text
        token = client.post(
            "/v1/auth/token",
            data={
                "grant_type": "password",
                "username": "fm@example.com",
                "password": "fleet-manager-password",
            },
        ).json()["access_token"]
        for headers in ({}, {"Authorization": f"Bearer {token}"}):  # admin, fleet manager
            items = client.get("/v1/vehicles", headers=headers).json()["items"]
            by_vin = {v["vin"]: v for v in items}
            assert set(by_vin) == {quiet, heard}
            assert by_vin[quiet] == {
                "vin": quiet,
                "reported": False,
                "online": None,
                "offline_reason": None,
                "missing_samples": 0,
                "missing_events": 0,
                "first_seen": None,
                "first_seen_iso": None,
                "last_seen": None,
                "last_seen_iso": None,
                "status_changed_at": None,
                "status_changed_at_iso": None,
            }
            assert by_vin[heard]["reported"] is True
            assert by_vin[heard]["last_seen"] == 5
            detail = client.get(f"/v1/vehicles/{quiet}", headers=headers)
            assert detail.status_code == 200, detail.text
            assert detail.json()["state"] == {}
            assert detail.json()["reported"] is False
            history = client.get(
                f"/v1/vehicles/{quiet}/history",
                params={"signals": "Vehicle.Speed", "start": 0},
                headers=headers,
            )
            assert history.status_code == 200, history.text
            assert history.json()["items"] == []
        # a VIN nobody provisioned and that never reported is still unknown
        assert client.get("/v1/vehicles/WXXXXXX0000000001").status_code == 404


def test_the_vehicle_list_pages_across_both_databases(tmp_path: Path) -> None:
    """Provisioned-only and heard-only VINs interleave; pages of 2 walk all of them."""
    db_path = tmp_path / "telemetry.db"
    provisioned = [f"WPRAV{n:012d}" for n in (1, 3, 5)]
    heard = [f"WPRAV{n:012d}" for n in (2, 3, 4)]  # 3 is both
    with admin_client(ApiSettings(db_path)) as client:
        account = client.post("/v1/accounts", json={"kind": "organization", "name": "o"}).json()
        for vin in provisioned:
            client.post("/v1/vehicles", json={"vin": vin, "account_id": account["id"]})
        store = open_store(db_path)
        try:
            store.commit(IngestBatch(received_at=5, samples=[Sample(v, 1, 4, {}) for v in heard]))
        finally:
            store.close()
        seen: list[tuple[str, bool]] = []
        cursor = None
        for _ in range(10):
            body = client.get("/v1/vehicles", params={"limit": 2, "cursor": cursor}).json()
            seen += [(v["vin"], v["reported"]) for v in body["items"]]
            cursor = body["next"]
            if cursor is None:
                break
        assert seen == [
            (provisioned[0], False),
            (heard[0], True),
            (heard[1], True),
            (heard[2], True),
            (provisioned[2], False),
        ]


# --- body limits per route ------------------------------------------------------------------


def test_every_write_documents_its_body_limit(spec: dict[str, Any]) -> None:
    writes = [
        (method, path, op)
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
        if method != "get"
    ]
    assert len(writes) >= 10
    # a geofence of up to 1,000 positions is about 40 KiB of GeoJSON; a bulk command names
    # up to 10,000 VINs (about 200 KiB); a bulk acknowledgement up to 1,000 alert ids of up
    # to 16 digits (about 18 KiB)
    larger = {
        ("post", "/v1/alerts/acknowledge"): 32 * 1024,
        ("post", "/v1/command-jobs"): 256 * 1024,
        ("post", "/v1/geofences"): 128 * 1024,
        ("put", "/v1/geofences/{geofence_id}"): 128 * 1024,
    }
    for method, path, op in writes:
        assert op.get("x-max-body-bytes") == larger.get((method, path), 16 * 1024), (method, path)


def test_a_route_may_take_a_larger_body_than_the_default() -> None:
    app = FastAPI()
    app.add_middleware(BodyLimit, default=1000)

    @app.post("/small")
    async def small(request: Request) -> int:
        return len(await request.body())

    @app.post("/large", openapi_extra=body_limit(5000))
    async def large(request: Request) -> int:
        return len(await request.body())

    app.state.api_routes = [r for r in app.routes if getattr(r, "path", "") in ("/small", "/large")]
    document_body_limits(app.state.api_routes, default=1000)
    with TestClient(app) as client:
        assert client.post("/small", content=b"x" * 1000).json() == 1000
        assert client.post("/small", content=b"x" * 1001).status_code == 413
        assert client.post("/large", content=b"x" * 5000).json() == 5000
        refused = client.post("/large", content=b"x" * 5001)
        assert refused.status_code == 413
        assert "5000 bytes" in refused.json()["error"]["message"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            for _ in range(10):
                yield b"x" * 600

        assert client.post("/large", content=chunks()).status_code == 413


# --- numbers in bodies (security review 3) --------------------------------------------------


def _body_numbers(model: type[BaseModel], seen: set[type[BaseModel]]) -> Iterator[tuple[str, Any]]:
    """(name, type with its constraints) of every int and float field of a body model and
    the models it nests."""
    if model in seen:
        return
    seen.add(model)
    for name, field in model.model_fields.items():
        # (type, the field's constraints if they apply to it: not inside a list)
        stack: list[tuple[Any, list[Any]]] = [(field.annotation, field.metadata)]
        while stack:
            part, meta = stack.pop()
            if isinstance(part, type) and issubclass(part, BaseModel):
                yield from _body_numbers(part, seen)
            elif part in (int, float) or (
                get_origin(part) is Annotated and get_args(part)[0] in (int, float)
            ):
                yield f"{model.__name__}.{name}", Annotated[part, *meta] if meta else part
            elif get_origin(part) is Annotated:
                stack.append((get_args(part)[0], meta))
            else:
                inner = meta if get_origin(part) in (Union, UnionType) else []
                stack.extend((arg, inner) for arg in get_args(part))


def test_no_body_number_takes_a_boolean_or_text() -> None:
    """JSON `true` was taken as 1 and `"5"` as 5 wherever a body wants a number (an
    account id, a duration, a weekday): each is refused now, and every number is
    bounded (a huge one would have reached the database)."""
    app = gateway.api.create_app(ApiSettings(Path("unused.db")))
    seen: set[type[BaseModel]] = set()
    found: list[tuple[str, Any]] = []
    for route in app.state.api_routes:
        body = getattr(route, "body_field", None)
        if body is None:
            continue
        annotation = body.field_info.annotation
        for model in (annotation, *get_args(annotation)):
            if isinstance(model, type) and issubclass(model, BaseModel):
                found.extend(_body_numbers(model, seen))
    assert len(found) >= 25, found
    for name, kind in found:
        adapter: TypeAdapter[Any] = TypeAdapter(kind)
        # a time may be written as text: epoch ms or ISO 8601 (gateway.api.params.Timestamp)
        text_ok = name.startswith("AssignmentRequest.valid_")
        for bad in (True, False, *(() if text_ok else ("7",)), 2**64, -(2**64)):
            try:
                adapter.validate_python(bad)
            except ValidationError:
                continue
            pytest.fail(f"{name} took {bad!r}")


# --- HEAD (security review 3) -----------------------------------------------------------------


@pytest.mark.parametrize("url", ["/v1/vehicles", "/healthz", "/v1/catalog", "/v1/me"])
def test_head_answers_like_get_without_a_body(client: TestClient, url: str) -> None:
    """HEAD on every GET route answered 405 (FastAPI registers GET only)."""
    got = client.get(url)
    head = client.head(url)
    assert head.status_code == got.status_code, head.text
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]
    assert head.headers["content-length"] == str(len(got.content))


def test_head_on_a_live_stream_ends_at_its_headers(client: TestClient) -> None:
    """A stream asked with HEAD answers its headers and ends (it does not hold its slot)."""
    for _ in range(20):  # more than the per-user cap: every slot was given back
        head = client.head("/v1/stream")
        assert head.status_code == 200, head.text
        assert head.headers["content-type"].startswith("text/event-stream")
        assert head.content == b""


def test_head_on_a_route_without_get_is_still_405(client: TestClient) -> None:
    r = client.head("/v1/auth/register")
    assert r.status_code == 405
    assert r.headers["allow"] == "POST"
