"""Webhook network safety: only global addresses, resolved once and pinned, bounded attempts.

`resolve_checked` resolves the URL's host once and refuses it unless every address is
globally routable (`ip.is_global`, with the IPv4 inside IPv4-mapped, 6to4, Teredo and NAT64
addresses checked too). `post_pinned` then connects to exactly that address (the Host
header and TLS SNI/certificate check keep the name), so a DNS answer that changes between
the check and the connection (rebinding) cannot redirect a delivery. Each attempt has one
total deadline (a server that drips one byte at a time cannot hold it), and at most
MAX_RESPONSE_BYTES of the response are read; only a short sanitised excerpt is kept.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx

Resolver = Callable[[str, int], list[str]]
MAX_RESPONSE_BYTES = 4096
EXCERPT_CHARS = 200
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class WebhookUrlError(ValueError):
    """The webhook URL is not allowed."""


@dataclass(frozen=True)
class PinnedTarget:
    """A checked URL and the one address its deliveries connect to."""

    url: str
    host: str
    port: int
    address: str


@dataclass(frozen=True)
class AttemptResult:
    """The outcome of one POST: the status (None if no answer) and a short excerpt or error."""

    status_code: int | None
    excerpt: str


def system_resolver(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (getaddrinfo, TCP)."""
    infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]).split("%", 1)[0] for info in infos]


def _embedded_v4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    found = [v4 for v4 in (ip.ipv4_mapped, ip.sixtofour) if v4 is not None]
    if ip.teredo is not None:
        found.extend(ip.teredo)
    if ip in _NAT64:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def is_global_address(address: str) -> bool:
    """True only for a globally routable unicast address (and any IPv4 embedded in it)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        candidates.extend(_embedded_v4(ip))
    return all(c.is_global and not c.is_multicast for c in candidates)


def resolve_checked(url: str, *, allow_private: bool, resolver: Resolver) -> PinnedTarget:
    """Parse `url`, resolve its host once and pick the address to connect to.

    Raises WebhookUrlError for a URL that does not parse, a host that does not resolve, or
    (unless allow_private) a host with any non-global address.
    """
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise WebhookUrlError(f"webhook_url is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not host:
        raise WebhookUrlError("webhook_url must be an absolute http:// or https:// URL")
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = list(dict.fromkeys(resolver(host, port)))
    except (OSError, UnicodeError) as exc:
        raise WebhookUrlError(f"webhook_url host {host!r} does not resolve") from exc
    if not addresses:
        raise WebhookUrlError(f"webhook_url host {host!r} does not resolve")
    blocked = sorted(a for a in addresses if not is_global_address(a))
    if blocked and not allow_private:
        raise WebhookUrlError(
            f"webhook_url host {host!r} resolves to a private, loopback or link-local "
            f"(not globally routable) address ({', '.join(blocked)}); use a public URL"
        )
    return PinnedTarget(url=url, host=host, port=port, address=addresses[0])


def sanitise(text: str, limit: int = EXCERPT_CHARS) -> str:
    """Printable characters only (no NUL or control codes), whitespace collapsed, cut to `limit`."""
    kept = "".join(ch if ch.isprintable() else " " for ch in text)
    return " ".join(kept.split())[:limit]


def _pinned_url(target: PinnedTarget) -> str:
    parts = urlsplit(target.url)
    literal = f"[{target.address}]" if ":" in target.address else target.address
    return urlunsplit((parts.scheme, f"{literal}:{target.port}", parts.path or "/",
                       parts.query, ""))


async def _post(target: PinnedTarget, body: bytes, headers: dict[str, str],
                deadline_s: float) -> AttemptResult:
    default_port = 443 if target.url.startswith("https") else 80
    host_header = target.host if target.port == default_port else f"{target.host}:{target.port}"
    with anyio.fail_after(deadline_s):
        async with httpx.AsyncClient(timeout=deadline_s, follow_redirects=False,
                                     trust_env=False) as client:
            request = client.build_request(
                "POST", _pinned_url(target), content=body,
                headers={**headers, "Host": host_header},
                extensions={"sni_hostname": target.host},
            )
            response = await client.send(request, stream=True)
            try:
                data = bytearray()
                async for chunk in response.aiter_raw():
                    data.extend(chunk[: MAX_RESPONSE_BYTES - len(data)])
                    if len(data) >= MAX_RESPONSE_BYTES:
                        break
            finally:
                await response.aclose()
    return AttemptResult(response.status_code, sanitise(data.decode("utf-8", "replace")))


def post_pinned(target: PinnedTarget, *, body: bytes, headers: dict[str, str],
                deadline_s: float) -> AttemptResult:
    """POST to the pinned address within one total deadline; errors become an excerpt."""
    try:
        return anyio.run(_post, target, body, headers, deadline_s)
    except TimeoutError:
        return AttemptResult(None, f"TimeoutError: no complete answer within {deadline_s:g} s")
    except httpx.HTTPError as exc:
        return AttemptResult(None, sanitise(f"{type(exc).__name__}: {exc}", 500))
