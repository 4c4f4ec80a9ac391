"""Per-address limits count an IPv6 client by its /64, and one carrying an IPv4 client's address
as that client."""

from __future__ import annotations

import pytest

from service.addresses import address_group


@pytest.mark.parametrize(("address", "group"), [
    ("203.0.113.7", "203.0.113.7"),
    ("2001:db8::1", "2001:db8::/64"),
    ("2001:db8:0:0:ffff:ffff:ffff:ffff", "2001:db8::/64"),
    ("2001:db8:0:1::1", "2001:db8:0:1::/64"),
    ("::ffff:203.0.113.7", "203.0.113.7"),  # IPv4 on an IPv6 socket is the IPv4 client
    ("64:ff9b::203.0.113.7", "203.0.113.7"),  # NAT64 puts every IPv4 client in one /64
    ("64:ff9b::cb00:7108", "203.0.113.8"),
    ("2002:cb00:7107:5::1", "203.0.113.7"),   # 6to4: the site behind 203.0.113.7
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "192.0.2.45"),  # Teredo: its client's (obfuscated) address
    ("fe80::1", "fe80::1"), ("fe80::2", "fe80::2"),  # every host on a link shares fe80::/64
    ("testclient", "testclient"),           # not an address: as it is
    ("127.0.0.1", "loopback"), ("127.9.9.9", "loopback"), ("::1", "loopback"), ("::ffff:127.0.0.2", "loopback"),
])
def test_an_address_is_counted_as_its_group(address, group):
    assert address_group(address) == group
