"""Webhooks as an attacker would use them (decision 0017): a host name that resolves to a
private or loopback address is refused when the webhook is created, a delivery refused by
the address check fails at once instead of being retried, an organization has at most
``max_webhooks_per_account`` webhooks, and the delivery log keeps the newest deliveries
of each webhook only."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from pathlib import Path

from gateway.api import ApiSettings
from gateway.notify import NotifySettings, WebhookWorker
from gateway.statedb import AccountRepository, StateDatabase
from gateway.statedb.webhooks import WebhookRepository
from tests.support.api import admin_client
from tests.support.notify import Receiver
from tests.support.waiting import wait_until


def test_a_name_resolving_to_loopback_is_refused_when_the_webhook_is_created(
    tmp_path: Path,
) -> None:
    with admin_client(ApiSettings(db_path=tmp_path / "telemetry.db")) as client:
        account = client.post("/v1/accounts", json={"kind": "organization", "name": "o"}).json()
        r = client.post(
            "/v1/webhooks", json={"url": "http://localhost:8080/hook", "account_id": account["id"]}
        )
        assert r.status_code == 422, r.text
        detail = r.json()["error"]["details"][0]
        assert detail["loc"] == ["body", "url"]
        assert "private, loopback or link-local" in detail["msg"]
        # without naming the address: the answer would map the installation's internal DNS
        assert "127.0.0.1" not in detail["msg"]
        assert "::1" not in detail["msg"]
        # a name that does not resolve now reaches nothing: accepted, checked per delivery
        r = client.post(
            "/v1/webhooks", json={"url": "https://hooks.invalid/x", "account_id": account["id"]}
        )
        assert r.status_code == 201, r.text


def test_an_organization_has_at_most_its_quota_of_webhooks(tmp_path: Path) -> None:
    notify = NotifySettings(max_webhooks_per_account=3)
    settings = ApiSettings(db_path=tmp_path / "telemetry.db", notify=notify)
    with admin_client(settings) as client:
        ids = [
            client.post("/v1/accounts", json={"kind": "organization", "name": n}).json()["id"]
            for n in ("a", "b")
        ]
        body = {"url": "https://hooks.invalid/x", "account_id": ids[0]}
        made = [client.post("/v1/webhooks", json=body) for _ in range(3)]
        assert [r.status_code for r in made] == [201, 201, 201]
        r = client.post("/v1/webhooks", json=body)
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "too_many_webhooks"
        # another organization's quota is its own
        r = client.post("/v1/webhooks", json={**body, "account_id": ids[1]})
        assert r.status_code == 201, r.text
        # deleting one makes room again
        assert client.delete(f"/v1/webhooks/{made[0].json()['id']}").status_code == 204
        assert client.post("/v1/webhooks", json=body).status_code == 201


def _repo(tmp_path: Path) -> tuple[StateDatabase, WebhookRepository, int]:
    db = StateDatabase(f"sqlite:///{tmp_path / 'state.db'}")
    db.upgrade()
    account = AccountRepository(db).create_account("organization", "o", now=1)
    return db, WebhookRepository(db), account.id


def test_a_delivery_refused_by_the_address_check_fails_at_once(tmp_path: Path) -> None:
    """The webhook was made while private targets were allowed (or its name moved since):
    the worker refuses the address and gives up at the first attempt, nothing is sent."""
    db, repo, account = _repo(tmp_path)
    with Receiver() as receiver:
        url = receiver.url.replace("127.0.0.1", "localhost")
        hook = repo.create(account_id=account, url=url, event_types=["*"], secret="whsec_x",
                           description=None, created_by=1, now=1)  # fmt: skip
        delivery = repo.enqueue_test(hook.id, now=int(time.time() * 1000))

        async def run() -> None:
            settings = NotifySettings(webhook_poll_s=0.02, webhook_retry_base_s=0.05)
            worker = WebhookWorker(repo, settings)
            await worker.start()
            deadline = time.monotonic() + 10
            while repo.deliveries(hook.id, before_id=None, limit=1)[0].status == "pending":
                assert time.monotonic() < deadline, "the delivery stayed pending"
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # time for retries, were there any
            await worker.stop()

        asyncio.run(run())
        (done,) = repo.deliveries(hook.id, before_id=None, limit=10)
        assert done.id == delivery.id
        assert (done.status, done.attempts) == ("failed", 1)
        assert done.error is not None
        assert done.error.startswith("refused: ")
        assert receiver.requests == []
    db.dispose()


def test_the_delivery_log_keeps_the_newest_finished_deliveries(tmp_path: Path) -> None:
    db, repo, account = _repo(tmp_path)
    hooks = [
        repo.create(
            account_id=account,
            url="https://hooks.invalid/x",
            event_types=["*"],
            secret="whsec_x",
            description=None,
            created_by=1,
            now=1,
        )
        for _ in range(2)
    ]
    made = {h.id: [repo.enqueue_test(h.id, now=n).id for n in range(30)] for h in hooks}
    busy, quiet = hooks[0].id, hooks[1].id
    for i, delivery_id in enumerate(made[busy]):
        if i != 3:  # one old delivery still pending: never pruned
            repo.record_attempt(delivery_id, at=1, delivered=i % 2 == 0, response_status=None,
                                error=None, next_attempt_at=None)  # fmt: skip
    assert repo.prune_deliveries(keep=10) == 19
    left = [d.id for d in repo.deliveries(busy, before_id=None, limit=100)]
    assert left == sorted([*made[busy][-10:], made[busy][3]], reverse=True)
    # the quiet webhook's deliveries are all pending: kept
    assert len(repo.deliveries(quiet, before_id=None, limit=100)) == 30
    assert repo.prune_deliveries(keep=10) == 0
    db.dispose()


def test_the_worker_prunes_the_delivery_log(tmp_path: Path) -> None:
    db, repo, account = _repo(tmp_path)
    with Receiver() as receiver:
        hook = repo.create(account_id=account, url=receiver.url, event_types=["*"],
                           secret="whsec_x", description=None, created_by=1, now=1)  # fmt: skip
        for n in range(6):
            repo.enqueue_test(hook.id, now=n)

        async def run() -> None:
            settings = NotifySettings(
                webhook_allow_private_targets=True, webhook_poll_s=0.02, webhook_delivery_log=2
            )
            worker = WebhookWorker(repo, settings, clock_ms=lambda: int(time.time() * 1000))
            await worker.start()
            await asyncio.to_thread(wait_until, lambda: len(receiver.requests) == 6)
            await worker.stop()
            # a new worker prunes at its start
            worker = WebhookWorker(repo, settings)
            await worker.start()
            await asyncio.sleep(0.2)
            await worker.stop()

        asyncio.run(run())
    assert len(repo.deliveries(hook.id, before_id=None, limit=100)) == 2
    db.dispose()


def test_a_delivery_connects_to_the_address_the_check_saw(tmp_path: Path) -> None:
    """Security review 2 (decision 0023): the worker checked the addresses a name resolved
    to, then httpx resolved the name again to connect, so a DNS answer that changed in
    between (rebinding to an internal address) got around the check. The connection now
    goes to the address that was checked, with the name as ``Host``. Here the name resolves
    only through the worker's resolver (to the receiver's loopback address; private targets
    are allowed so that the check passes it): a second resolution cannot find it at all."""
    db, repo, account = _repo(tmp_path)
    with Receiver() as receiver:
        port = int(receiver.url.split(":")[2].split("/")[0])
        url = f"http://rebound.invalid:{port}/hook"
        hook = repo.create(account_id=account, url=url, event_types=["*"], secret="whsec_x",
                           description=None, created_by=1, now=1)  # fmt: skip
        repo.enqueue_test(hook.id, now=int(time.time() * 1000))
        asked: list[str] = []

        async def resolver(host: str, _port: int) -> list[str]:
            asked.append(host)
            return ["127.0.0.1"] if host == "rebound.invalid" else []

        async def run() -> None:
            settings = NotifySettings(
                webhook_poll_s=0.02, webhook_retry_base_s=0.05, webhook_allow_private_targets=True
            )
            worker = WebhookWorker(repo, settings, resolver=resolver)
            await worker.start()
            deadline = time.monotonic() + 10
            while repo.deliveries(hook.id, before_id=None, limit=1)[0].attempts == 0:
                assert time.monotonic() < deadline, "no attempt"
                await asyncio.sleep(0.05)
            await worker.stop()

        asyncio.run(run())
        (done,) = repo.deliveries(hook.id, before_id=None, limit=10)
        assert (done.status, done.error) == ("delivered", None)
        assert asked == ["rebound.invalid"]
        ((headers, _body),) = receiver.requests
        assert headers["host"] == f"rebound.invalid:{port}"
    db.dispose()


class _Dripper:
    """A real HTTP server that answers every POST ``200`` with a body it never finishes:
    the headers, then one byte every ``every_s`` (well within a read timeout), announcing
    ``size`` bytes. What an organization's own webhook endpoint can do to the worker."""

    def __init__(self, *, size: int, every_s: float) -> None:
        self.size, self.every_s = size, every_s
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.stopping = threading.Event()
        self.requests = 0
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}/hook"

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.recv(65536)
            self.requests += 1
            conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {self.size}\r\n\r\n".encode())
            while not self.stopping.wait(self.every_s):
                conn.sendall(b"x")

    def close(self) -> None:
        self.stopping.set()
        self.listener.close()


def test_a_slow_webhook_endpoint_cannot_hold_up_other_organizations_deliveries(
    tmp_path: Path,
) -> None:
    """Security review 4: the worker read every answer's whole body, and the timeout was
    httpx's per read: an endpoint that answers 200 and then sends its (announced, huge)
    body a byte at a time kept the delivery going for ever. The worker sends a batch at a
    time, so two such deliveries (its concurrency) stopped every other organization's
    webhooks. Now an attempt ends within ``webhook_timeout_s``, body or not, and the body
    is not read (the status line decides)."""
    db, repo, attacker = _repo(tmp_path)
    victim = AccountRepository(db).create_account("organization", "victim", now=1).id
    dripper = _Dripper(size=10**9, every_s=0.2)
    try:
        with Receiver() as receiver:
            slow = repo.create(account_id=attacker, url=dripper.url, event_types=["*"],
                               secret="whsec_a", description=None, created_by=1, now=1)  # fmt: skip
            hook = repo.create(account_id=victim, url=receiver.url, event_types=["*"],
                               secret="whsec_v", description=None, created_by=1, now=1)  # fmt: skip
            now = int(time.time() * 1000)
            for _ in range(2):
                repo.enqueue_test(slow.id, now=now - 1000)  # due first
            repo.enqueue_test(hook.id, now=now)
            settings = NotifySettings(webhook_allow_private_targets=True, webhook_timeout_s=1.0,
                                      webhook_concurrency=2, webhook_poll_s=0.05)  # fmt: skip

            async def run() -> float:
                worker = WebhookWorker(repo, settings)
                await worker.start()
                started = time.monotonic()
                try:
                    await asyncio.to_thread(
                        wait_until, lambda: bool(receiver.requests), timeout=8,
                        what="the victim's delivery",
                    )  # fmt: skip
                    return time.monotonic() - started
                finally:
                    dripper.close()  # (before stop: the old worker waits for its batch)
                    await worker.stop()

            waited = asyncio.run(run())
            assert receiver.requests, "the victim's delivery was never sent"
            assert waited < 5, f"the victim's delivery waited {waited:.1f} s"
            attempts = repo.deliveries(slow.id, before_id=None, limit=10)
            assert {d.response_status for d in attempts} <= {200, None}
    finally:
        dripper.close()
        db.dispose()
