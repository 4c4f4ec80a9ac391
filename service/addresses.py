"""Whom a client address stands for: an IPv4 address itself, an IPv6 address its /64 (one
site's network, in which a host may take any of 2^64 addresses, and with each a fresh share
of every per-address limit), and every loopback address one client (this machine, which may
connect from any of 127.0.0.0/8)."""

from __future__ import annotations

import functools
import ipaddress

IPV6_PREFIX = 64


@functools.lru_cache(maxsize=4096)
def address_group(address: str) -> str:
    """`address` as the per-address limits count it; a name that is not an IP address as it is."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback):
        return "loopback"
    if ip.version == 4:
        return address
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.ip_network(f"{ip}/{IPV6_PREFIX}", strict=False))
