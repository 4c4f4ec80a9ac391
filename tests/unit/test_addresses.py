"""Per-address limits count an IPv6 client by its /64."""

from __future__ import annotations

import pytest

from service.addresses import address_group


@pytest.mark.parametrize(("address", "group"), [
    ("203.0.113.7", "203.0.113.7"),
    ("2001:db8::1", "2001:db8::/64"),
    ("2001:db8:0:0:ffff:ffff:ffff:ffff", "2001:db8::/64"),
    ("2001:db8:0:1::1", "2001:db8:0:1::/64"),
    ("::ffff:203.0.113.7", "203.0.113.7"),  # IPv4 on an IPv6 socket is the IPv4 client
    ("testclient", "testclient"),           # not an address: as it is
    ("127.0.0.1", "loopback"), ("127.9.9.9", "loopback"), ("::1", "loopback"), ("::ffff:127.0.0.2", "loopback"),
])
def test_an_address_is_counted_as_its_group(address, group):
    assert address_group(address) == group
