"""Where a webhook may go: public addresses only, unless the deployment allow-lists a host or network.

A URL is judged by the addresses its host resolves to, never by its spelling:
`2130706433`, `127.1`, `0x7f.1` and `localhost` all resolve to 127.0.0.1. The sender
connects to the very address that was checked, so a DNS server that answers
differently the second time (rebinding) is never asked a second time.
Torch-free and Flask-free: the API checks at submission, the webhook worker at delivery.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as LookupTimeout
from dataclasses import dataclass
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
ALLOW_SETTING = "SHIFTSCORE_WEBHOOK_ALLOW_HOSTS"
_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# A name server that answers slowly must not hold an API thread for the resolver's own
# timeouts (tens of seconds): lookups run in a small pool and are given up after this.
RESOLVE_TIMEOUT_S = 2.0
_LOOKUP_THREADS = 4
_lookups: tuple[int, ThreadPoolExecutor] | None = None


class EgressRefused(ValueError):
    """A webhook URL that may not be reached; the message says why and what to do instead."""


@dataclass(frozen=True)
class Target:
    """A checked webhook URL: what to put in the request, and the address to connect to."""

    scheme: str
    host: str
    port: int
    path: str
    address: str


def parse_allow_entry(entry: str) -> str:
    """An allow-list entry as a normalised CIDR (an address is a /32 or /128) or a lower-case host name."""
    try:
        return str(ipaddress.ip_network(entry, strict=False))
    except ValueError:
        pass
    name = entry.lower().rstrip(".")
    if not _HOSTNAME.match(name):
        raise ValueError(f"{entry!r} is neither a host name nor an IP address or CIDR")
    return name


def _embedded_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries to the IPv4 world (mapped, 6to4, Teredo, NAT64)."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped:
        return address.ipv4_mapped
    if address.sixtofour:
        return address.sixtofour
    if address.teredo:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def why_internal(address: Address) -> str | None:
    """Why `address` is not a public one (loopback, private, …), or None when it is public."""
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        reason = why_internal(embedded)
        return f"{reason}, as {embedded}" if reason else None
    checks = (
        ("unspecified", address.is_unspecified), ("loopback", address.is_loopback),
        ("link-local", address.is_link_local), ("multicast", address.is_multicast),
        ("private", address.is_private), ("reserved", address.is_reserved),
        ("site-local", isinstance(address, ipaddress.IPv6Address) and address.is_site_local),
        ("not globally routable", not address.is_global),
    )
    return next((name for name, hit in checks if hit), None)


def _allowed(host: str, address: Address, allow: tuple[str, ...]) -> bool:
    if host.rstrip(".") in allow:
        return True
    candidates = [address] + [a for a in [_embedded_ipv4(address)] if a is not None]
    for entry in allow:
        try:
            network: Network = ipaddress.ip_network(entry)
        except ValueError:
            continue
        if any(candidate.version == network.version and candidate in network for candidate in candidates):
            return True
    return False


def _split(url: str) -> tuple[str, str, int, str]:
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unclosed "[" of an IPv6 address
        raise EgressRefused(f"webhook_url is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise EgressRefused("webhook_url must start with http:// or https://")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise EgressRefused("webhook_url has a port that is not a number from 1 to 65535")
    port = port or (443 if parts.scheme == "https" else 80)
    if not parts.hostname:
        raise EgressRefused("webhook_url has no host; give one such as https://hooks.example.com/shiftscore")
    if parts.username is not None or parts.password is not None:
        raise EgressRefused("put no user name or password in webhook_url: the receiver authenticates "
                            "deliveries by their X-ShiftScore-Signature header")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.hostname, port, path


def _lookup_pool() -> ThreadPoolExecutor:
    # One pool per process: a pool's threads do not survive a fork.
    global _lookups
    if _lookups is None or _lookups[0] != os.getpid():
        _lookups = (os.getpid(), ThreadPoolExecutor(_LOOKUP_THREADS, thread_name_prefix="resolve"))
    return _lookups[1]


def resolve(url: str, allow: tuple[str, ...]) -> Target:
    """Check `url` and pick the address to send to; raises EgressRefused for an internal or bad target."""
    scheme, host, port, path = _split(url)
    try:
        found = _lookup_pool().submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM).result(
            timeout=RESOLVE_TIMEOUT_S)
    except LookupTimeout:
        raise EgressRefused(f"the webhook_url host '{host}' did not resolve within {RESOLVE_TIMEOUT_S:g} s; "
                            "give a host name whose DNS answers promptly") from None
    except (socket.gaierror, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise EgressRefused(f"the webhook_url host '{host}' does not resolve ({reason}); "
                            "give a host name that resolves to a public address") from None
    addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in found))
    # Every address must pass: a name with one public and one internal address is refused,
    # since the connection could land on either.
    for address in addresses:
        reason = why_internal(address)
        if reason and not _allowed(host, address, allow):
            shown = f"'{host}' resolves to {address}" if str(address) != host else f"{address} is"
            raise EgressRefused(
                f"webhook_url must reach a public address, but {shown} ({reason}); use a publicly "
                f"reachable receiver, or ask the operator to allow it in {ALLOW_SETTING}"
            )
    return Target(scheme=scheme, host=host, port=port, path=path, address=str(addresses[0]))
