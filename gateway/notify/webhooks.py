"""The webhook worker: due deliveries out, signed, retried with backoff, every attempt logged.

Every ``webhook_poll_s`` (or at once after :meth:`WebhookWorker.poke`) it claims up to
``webhook_concurrency`` due deliveries (:meth:`gateway.statedb.webhooks.WebhookRepository.
claim_due`: a lease, so several API processes never send one attempt twice) and POSTs each:

* the body stored with the delivery, byte for byte, with ``Content-Type:
  application/json``, ``Telematics-Event-Id``, ``Telematics-Event-Type`` and the signature
  ``Telematics-Signature: t=<unix s>,v1=<HMAC-SHA256 hex of "<t>." + body>``
  (:func:`gateway.core.notify.signature_header`; a new timestamp at every attempt);
* to an address checked at that moment: the host is resolved here and every address must
  be public unless the operator allows private targets (:func:`gateway.core.notify.
  check_webhook_url`), and redirects are not followed (a redirect to an internal address
  would get around the check). The connection goes to a checked address, with the name as
  ``Host`` and as the TLS server name (certificate checked against it): the name is not
  resolved a second time, so a DNS answer that changes meanwhile (rebinding) does not get
  around the check (decision 0023);
* a 2xx status line within ``webhook_timeout_s`` (the whole attempt, connecting included)
  is ``delivered``; the answer's body is never read (decision 0039); anything else is tried again
  after 10 s, 20 s, 40 s ... (at most an hour), and ``failed`` after
  ``webhook_max_attempts``; a delivery whose address the check refuses is ``failed`` at
  once (the next attempt would be refused the same way);
* the delivery log keeps, per webhook, the newest ``webhook_delivery_log`` finished
  deliveries (pruned every minute; pending ones are never pruned).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import SplitResult, urlsplit, urlunsplit

import httpx

from gateway.core.clock import wall_clock_ms
from gateway.core.notify import (
    SIGNATURE_HEADER,
    UnacceptableUrl,
    check_webhook_url,
    next_attempt_delay_s,
    signature_header,
)
from gateway.notify.settings import NotifySettings
from gateway.statedb.webhooks import DeliveryRecord, WebhookRecord, WebhookRepository

__all__ = ["WebhookWorker", "check_url_now", "resolve"]

log = logging.getLogger(__name__)

#: how the error of a delivery refused by the address check begins (it fails at once)
_REFUSED = "refused: "
_PRUNE_EVERY_MS = 60_000


def _pinned(parts: SplitResult, address: str) -> str:
    """The URL with its host replaced by ``address`` (an IP literal)."""
    host = f"[{address}]" if ":" in address else address
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


async def resolve(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to (what the connection may use)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def check_url_now(url: str, *, allow_private: bool) -> None:
    """The check of a webhook URL when it is created: :class:`UnacceptableUrl` for a bad
    URL, an IP literal that is not public, or a name that resolves (now) to any address
    that is not public (unless the operator allows private targets). A name that does not
    resolve now is accepted: it can reach nothing, and every delivery resolves and checks
    it again (a name may move later: that is why). Blocking (DNS): call it off the loop."""
    check_webhook_url(url, resolved=None, allow_private=allow_private)
    parts = urlsplit(url)
    host = parts.hostname or ""
    if allow_private or _is_ip_literal(host):
        return
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return
    addresses = sorted({str(info[4][0]) for info in infos})
    check_webhook_url(url, resolved=addresses, allow_private=False)


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class WebhookWorker:
    """See the module docstring. :meth:`start`, :meth:`stop`."""

    def __init__(
        self,
        repository: WebhookRepository,
        settings: NotifySettings,
        *,
        clock_ms: Callable[[], int] = wall_clock_ms,
        resolver: Callable[[str, int], Awaitable[list[str]]] | None = None,
    ) -> None:
        self.repo = repository
        self.settings = settings
        self._clock_ms = clock_ms
        #: the name's addresses (the system's resolver; tests give their own)
        self._resolve = resolver or resolve
        self._poke = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        # no kept-alive connections: they are pooled by address, and a connection whose TLS
        # certificate was checked for one webhook's name must not carry another's delivery
        self._client = httpx.AsyncClient(
            timeout=self.settings.webhook_timeout_s,
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        )
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stopping.set()
        self._poke.set()
        if self._task is not None:
            await self._task
        if self._client is not None:
            await self._client.aclose()

    def poke(self) -> None:
        self._poke.set()

    async def _run(self) -> None:
        next_prune = 0
        while not self._stopping.is_set():
            try:
                while await self._round() and not self._stopping.is_set():
                    pass
                if self._clock_ms() >= next_prune:
                    next_prune = self._clock_ms() + _PRUNE_EVERY_MS
                    keep = self.settings.webhook_delivery_log
                    await asyncio.to_thread(self.repo.prune_deliveries, keep=keep)
            except Exception:
                log.exception("webhook deliveries failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), self.settings.webhook_poll_s)
            self._poke.clear()

    async def _round(self) -> bool:
        """Claim and send one batch; whether there was a full one (look again at once)."""
        s = self.settings
        claimed = await asyncio.to_thread(
            self.repo.claim_due,
            now=self._clock_ms(),
            lease_ms=int(s.webhook_lease_s * 1000),
            limit=s.webhook_concurrency,
        )
        await asyncio.gather(*(self._deliver(d, hook) for d, hook in claimed))
        return len(claimed) == s.webhook_concurrency

    async def _deliver(self, delivery: DeliveryRecord, hook: WebhookRecord) -> None:
        status, error = await self._attempt(delivery, hook)
        delivered = status is not None and 200 <= status < 300
        # an address the check refuses is refused again at every attempt: give up now
        refused = error is not None and error.startswith(_REFUSED)
        now = self._clock_ms()
        delay = (
            None
            if delivered or refused
            else next_attempt_delay_s(
                delivery.attempts + 1,
                base_s=self.settings.webhook_retry_base_s,
                cap_s=self.settings.webhook_retry_cap_s,
                max_attempts=self.settings.webhook_max_attempts,
            )
        )
        if not delivered and error is None:
            error = f"HTTP {status}"
        await asyncio.to_thread(
            self.repo.record_attempt,
            delivery.id,
            at=now,
            delivered=delivered,
            response_status=status,
            error=None if delivered else error,
            next_attempt_at=None if delay is None else now + int(delay * 1000),
        )

    async def _attempt(
        self, delivery: DeliveryRecord, hook: WebhookRecord
    ) -> tuple[int | None, str | None]:
        """POST once; (HTTP status or None, what went wrong or None)."""
        assert self._client is not None
        parts = urlsplit(hook.url)
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
            addresses = await self._resolve(parts.hostname or "", port)
            check_webhook_url(
                hook.url,
                resolved=addresses,
                allow_private=self.settings.webhook_allow_private_targets,
            )
        except UnacceptableUrl as exc:
            return None, f"{_REFUSED}{exc}"
        except (OSError, ValueError) as exc:
            return None, f"cannot resolve {parts.hostname}: {exc}"
        if not addresses:
            return None, f"cannot resolve {parts.hostname}: no address"
        body = delivery.body.encode()
        headers = {
            "Host": parts.netloc,
            "Content-Type": "application/json",
            "User-Agent": "telematics-gateway-webhooks/1",
            "Telematics-Event-Type": delivery.event_type,
            "Telematics-Delivery-Id": str(delivery.id),
            SIGNATURE_HEADER: signature_header(hook.secret, self._clock_ms() // 1000, body),
        }
        if delivery.event_id is not None:
            headers["Telematics-Event-Id"] = str(delivery.event_id)
        # to the address just checked, not to the name (httpx would resolve it again)
        extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
        request = self._client.build_request(
            "POST",
            _pinned(parts, min(addresses, key=lambda a: ":" in a)),  # IPv4 first
            content=body,
            headers=headers,
            extensions=extensions,
        )
        try:
            # the whole attempt within the timeout (httpx's is per read: a body sent a byte
            # at a time never ended), and the body is never read (it could be any size):
            # the status line decides (decision 0039)
            async with asyncio.timeout(self.settings.webhook_timeout_s):
                response = await self._client.send(request, stream=True)
                await response.aclose()
        except TimeoutError:
            return None, f"no answer within {self.settings.webhook_timeout_s:g} s"
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"[:500]
        return response.status_code, None
