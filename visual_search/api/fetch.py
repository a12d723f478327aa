"""Download an image from a URL without letting the server be used against its own network.

Server-side request forgery guard: http/https only; the host is resolved once and every
address it resolves to must be public (loopback, private, link-local, multicast, reserved,
unspecified, and IPv4 addresses hidden in IPv6 forms are refused, unless the shop allows a
network explicitly); the connection goes to the checked address (no second DNS lookup that
could answer differently); each redirect is checked the same way; time and size are limited.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from urllib.parse import urljoin, urlsplit

from django.utils.translation import gettext

from visual_search.exceptions import VisualSearchError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
NAT64 = ipaddress.ip_network("64:ff9b::/96")


class FetchRefused(VisualSearchError):
    """The URL is not allowed, or its download failed or broke a limit."""

    def __init__(self, message: str, code: str = "url_refused") -> None:
        super().__init__(message)
        self.code = code


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped:
        return address.ipv4_mapped
    if address.sixtofour:
        return address.sixtofour
    if address.teredo:
        return address.teredo[1]
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    packed = address.packed
    if packed[:12] == b"\x00" * 12:  # deprecated IPv4-compatible form ::a.b.c.d
        return ipaddress.IPv4Address(packed[12:])
    return None


def address_refusal(address: IPAddress, allowed: list) -> str | None:
    """Why this address may not be fetched, or None."""
    if any(address in network for network in allowed if network.version == address.version):
        return None
    if isinstance(address, ipaddress.IPv6Address):
        inner = _embedded_ipv4(address)
        if inner is not None:
            return address_refusal(inner, allowed)
    for flag in (
        "is_loopback",
        "is_private",
        "is_link_local",
        "is_multicast",
        "is_reserved",
        "is_unspecified",
    ):
        if getattr(address, flag):
            return f"{address} is not a public address ({flag[3:].replace('_', '-')})"
    if not address.is_global:
        return f"{address} is not a public address"
    return None


def resolve(host: str, port: int, allowed: list) -> IPAddress:
    """Resolve once; refuse if ANY address is not public (no picking the harmless one)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchRefused(
            gettext("Cannot resolve host %(host)r.") % {"host": host}, "url_unresolvable"
        ) from exc
    addresses = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        reason = address_refusal(address, allowed)
        if reason:
            raise FetchRefused(
                gettext("Refused to fetch from %(host)s: %(reason)s.")
                % {"host": host, "reason": reason},
                "url_forbidden",
            )
        addresses.append(address)
    if not addresses:
        raise FetchRefused(
            gettext("Host %(host)r has no address.") % {"host": host}, "url_unresolvable"
        )
    return addresses[0]


def _too_large(max_bytes: int) -> FetchRefused:
    return FetchRefused(
        gettext("The image is larger than %(limit)d bytes.") % {"limit": max_bytes}, "too_large"
    )


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, address: IPAddress, host: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = str(address)

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, address: IPAddress, host: str, port: int, timeout: float) -> None:
        self._tls = ssl.create_default_context()
        super().__init__(host, port, timeout=timeout, context=self._tls)
        self._address = str(address)

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)


def fetch(
    url: str,
    *,
    max_bytes: int,
    timeout: float,
    max_redirects: int = 3,
    allowed_networks: list[str] | None = None,
) -> bytes:
    allowed = [ipaddress.ip_network(n, strict=False) for n in allowed_networks or []]
    deadline = time.monotonic() + timeout
    for _ in range(max_redirects + 1):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise FetchRefused(gettext("Only http and https URLs can be fetched."), "url_scheme")
        if not parts.hostname:
            raise FetchRefused(gettext("The URL has no host."), "url_invalid")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise FetchRefused(gettext("The URL has an invalid port."), "url_invalid") from exc
        address = resolve(parts.hostname, port, allowed)
        connection_class = (
            _PinnedHTTPSConnection if parts.scheme == "https" else _PinnedHTTPConnection
        )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FetchRefused(gettext("The image download took too long."), "url_timeout")
        connection = connection_class(address, parts.hostname, port, remaining)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            connection.request(
                "GET", path, headers={"Accept": "image/*", "User-Agent": "visual-search"}
            )
            response = connection.getresponse()
            if response.status in (301, 302, 303, 307, 308):
                location = response.getheader("Location")
                if not location:
                    raise FetchRefused(gettext("A redirect without a Location."), "url_failed")
                url = urljoin(url, location)
                continue
            if response.status != 200:
                raise FetchRefused(
                    gettext("The image URL answered HTTP %(status)d.")
                    % {"status": response.status},
                    "url_failed",
                )
            length = response.getheader("Content-Length")
            if length and length.isdigit() and int(length) > max_bytes:
                raise _too_large(max_bytes)
            return _read_limited(response, max_bytes, deadline)
        except (OSError, http.client.HTTPException) as exc:
            raise FetchRefused(
                gettext("Could not download the image: %(error)s") % {"error": exc}, "url_failed"
            ) from exc
        finally:
            connection.close()
    raise FetchRefused(
        gettext("More than %(count)d redirects.") % {"count": max_redirects}, "url_failed"
    )


def _read_limited(response: http.client.HTTPResponse, max_bytes: int, deadline: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        if time.monotonic() > deadline:
            raise FetchRefused(gettext("The image download took too long."), "url_timeout")
        chunk = response.read(min(65536, max_bytes + 1 - size))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
