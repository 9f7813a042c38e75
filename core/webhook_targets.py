"""Where a webhook may point: checked when it is saved and again before every delivery.

A URL's host is resolved once and the delivery connects to the address that
was checked (:attr:`Target.address`), never resolving again: a name that
resolved to a public address for the check and to ``127.0.0.1`` for the
connection (DNS rebinding) cannot reach inside. Unless
``DEPOT_WEBHOOK_ALLOW_PRIVATE_NETWORKS`` is on, every address the name has
must be globally routable (``ipaddress``'s ``is_global``): loopback, private,
link-local (the ``169.254.169.254`` metadata service), unique-local
(``fd00:ec2::254``), shared and reserved ranges are refused, and so are the
clouds' metadata addresses that look public.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit, urlunsplit

from core.errors import BadUserInput

MAX_URL_LENGTH: Final = 2048

# Metadata services at addresses ``is_global`` does not already refuse.
_METADATA: Final = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "168.63.129.16")
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnsafeTarget(BadUserInput):
    """The URL is malformed, not https where it must be, or leads somewhere refused."""

    def __init__(self, message: str) -> None:
        super().__init__(message, field="url")


class Unresolvable(UnsafeTarget):
    """The URL's host has no address now (worth another try at delivery)."""


@dataclass(frozen=True, slots=True)
class Target:
    """A checked URL and the one address a delivery to it connects to."""

    url: str
    host: str
    address: IPAddress

    @property
    def pinned_url(self) -> str:
        """``url`` with its host replaced by :attr:`address` (sent with ``Host: host``)."""
        parts = urlsplit(self.url)
        literal = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        netloc = f"{literal}:{parts.port}" if parts.port is not None else literal
        return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))

    @property
    def host_header(self) -> str:
        port = urlsplit(self.url).port
        return f"{self.host}:{port}" if port is not None else self.host


def is_allowed(address: IPAddress, *, allow_private: bool) -> bool:
    """Whether a delivery may connect to ``address``."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if allow_private:
        return not address.is_unspecified and not address.is_multicast
    return address.is_global and not address.is_multicast and address not in _METADATA


def check_url(url: str, *, require_https: bool) -> tuple[str, str, int]:
    """``url``'s (scheme, host, port), or :class:`UnsafeTarget` saying what is wrong."""
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeTarget(f"A webhook URL has at most {MAX_URL_LENGTH} characters.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UnsafeTarget(f"{url!r} is not a URL.") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeTarget("A webhook URL starts with https:// and names a host.")
    if require_https and parts.scheme != "https":
        raise UnsafeTarget("A webhook URL must use https in production.")
    if parts.username is not None or parts.password is not None:
        raise UnsafeTarget("A webhook URL may not carry a user name or password.")
    if parts.fragment:
        raise UnsafeTarget("A webhook URL has no #fragment: it would never be sent.")
    default = 443 if parts.scheme == "https" else 80
    return parts.scheme, parts.hostname, port if port is not None else default


async def resolve(url: str, *, allow_private: bool, require_https: bool) -> Target:
    """Check ``url`` and resolve its host, once; every address it has must be allowed.

    Refusing the whole name when any of its addresses is refused keeps a
    round-robin record from slipping an internal address in. Costs one DNS
    lookup (none for an address literal).
    """
    _, host, port = check_url(url, require_https=require_https)
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            found = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except (socket.gaierror, UnicodeError):
            raise Unresolvable(f"The host {host!r} has no address.") from None
        # A scope (``fe80::1%eth0``) is not part of the address.
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in found]
    if not addresses:
        raise Unresolvable(f"The host {host!r} has no address.")
    for address in addresses:
        if not is_allowed(address, allow_private=allow_private):
            raise UnsafeTarget(
                f"The host {host!r} resolves to {address}, a loopback, private, link-local or "
                "metadata address, which webhooks may not reach "
                "(DEPOT_WEBHOOK_ALLOW_PRIVATE_NETWORKS)."
            )
    return Target(url=url, host=host, address=addresses[0])
