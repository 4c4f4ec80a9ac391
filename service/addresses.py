"""Whom a client address stands for: an IPv4 address itself, an IPv6 address its /64 (one
site's network, in which a host may take any of 2^64 addresses, and with each a fresh share
of every per-address limit), and every loopback address one client (this machine, which may
connect from any of 127.0.0.0/8).

IPv6 addresses that carry an IPv4 client's address stand for that client: IPv4-mapped ones,
NAT64's well-known prefix (RFC 6052: a gateway puts every IPv4 host it translates in one /64),
6to4 and Teredo. A link-local address stands for itself, since every host on a link shares
fe80::/64."""

from __future__ import annotations

import functools
import ipaddress

IPV6_PREFIX = 64
NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")


@functools.lru_cache(maxsize=4096)
def address_group(address: str) -> str:
    """`address` as the per-address limits count it; a name that is not an IP address as it is."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6:
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            ip = embedded
    if ip.is_loopback:
        return "loopback"
    if ip.version == 4 or ip.is_link_local:
        return str(ip)
    return str(ipaddress.ip_network(f"{ip}/{IPV6_PREFIX}", strict=False))


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in NAT64_WELL_KNOWN:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]  # (server, client)
    return None
