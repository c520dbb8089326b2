"""Direct-port addresses: parsing what servers announce, the client's policy, and what a server binds/announces."""
from __future__ import annotations

import pytest

from core.config import ClientConfig
from core.direct_protocol import may_connect_directly, parse_direct_address
from core.server.direct import direct_hosts


def test_announced_addresses_parse_or_are_ignored() -> None:
    assert parse_direct_address("127.0.0.1:31337") == ("127.0.0.1", 31337)
    assert parse_direct_address("::1:8000") == ("::1", 8000)
    for bad in ("", "127.0.0.1", "localhost:80", "127.0.0.1:0", "127.0.0.1:70000", "1.2.3.4:x"):
        assert parse_direct_address(bad) is None, bad


def test_policy_private_allows_loopback_and_lan_only() -> None:
    for host in ("127.0.0.1", "10.1.2.3", "192.168.0.7", "::1"):
        assert may_connect_directly(host, "private")
    assert not may_connect_directly("8.8.8.8", "private")
    assert may_connect_directly("8.8.8.8", "always")
    assert not may_connect_directly("127.0.0.1", "never")
    with pytest.raises(ValueError, match="direct_connections must be one of"):
        ClientConfig(direct_connections="sometimes")


def test_bind_and_announced_hosts_follow_the_p2p_addresses() -> None:
    assert direct_hosts(("/ip4/127.0.0.1/tcp/0",), (), []) == ("127.0.0.1", "127.0.0.1")
    assert direct_hosts(("/ip4/0.0.0.0/tcp/0",), ("/ip4/203.0.113.5/tcp/4000",), []) == ("0.0.0.0", "203.0.113.5")
    seen = ["/ip4/127.0.0.1/tcp/5000", "/ip4/192.168.1.20/tcp/5000"]
    assert direct_hosts(("/ip4/0.0.0.0/tcp/0",), (), seen) == ("0.0.0.0", "192.168.1.20")
    assert direct_hosts(("/ip6/::/tcp/0",), (), ["/ip4/127.0.0.1/tcp/5000"]) == ("0.0.0.0", "127.0.0.1")
