"""Direct-port addresses: parsing what servers announce, the client's policy, and what a server binds/announces."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from core import direct_protocol
from core.config import ClientConfig
from core.direct_protocol import (
    DirectEndpoint, check_greeting, direct_endpoint, hello, is_own_address, may_connect_directly, method_of_hello,
    parse_direct_address, server_greeting,
)
from core.errors import RemoteCallError
from core.server.direct import direct_hosts


def test_announced_addresses_parse_or_are_ignored() -> None:
    assert parse_direct_address("127.0.0.1:31337") == ("127.0.0.1", 31337)
    assert parse_direct_address("::1:8000") == ("::1", 8000)
    for bad in ("", "127.0.0.1", "localhost:80", "127.0.0.1:0", "127.0.0.1:70000", "1.2.3.4:x"):
        assert parse_direct_address(bad) is None, bad


def test_an_endpoint_needs_an_address_and_a_fingerprint() -> None:
    fingerprint = "ab" * 32
    assert direct_endpoint("10.0.0.2:31337", fingerprint) == DirectEndpoint("10.0.0.2", 31337, fingerprint)
    assert str(direct_endpoint("10.0.0.2:31337", fingerprint)) == "10.0.0.2:31337"
    for address, bad in (("10.0.0.2:31337", ""), ("10.0.0.2:31337", "AB" * 32), ("10.0.0.2:31337", "ab" * 31),
                         ("", fingerprint)):
        assert direct_endpoint(address, bad) is None, (address, bad)  # e.g. an older server's plain TCP port


def test_policy_private_allows_loopback_and_this_machines_networks_only(monkeypatch) -> None:
    lan = [SimpleNamespace(address="192.168.1.20", netmask="255.255.255.0"),
           SimpleNamespace(address="fd00::5", netmask="ffff:ffff:ffff:ffff::"),  # psutil's form of an IPv6 mask
           SimpleNamespace(address="aa:bb:cc:dd:ee:ff", netmask=None)]  # a link-layer entry is skipped
    monkeypatch.setattr(direct_protocol.psutil, "net_if_addrs", lambda: {"lo": [], "eth0": lan})
    monkeypatch.setattr(direct_protocol, "_interfaces", (float("-inf"), []))
    for host in ("127.0.0.1", "192.168.1.7", "::1", "fd00::9"):
        assert may_connect_directly(host, "private"), host
    for host in ("192.168.2.7", "10.1.2.3", "8.8.8.8", "fd01::9"):  # another LAN's private address, a public one
        assert not may_connect_directly(host, "private"), host
    assert may_connect_directly("8.8.8.8", "always")
    assert not may_connect_directly("127.0.0.1", "never")
    with pytest.raises(ValueError, match="direct_connections must be one of"):
        ClientConfig(direct_connections="sometimes")
    # this machine's own addresses (local connections, core.direct_local): loopback and its interfaces' addresses
    for host in ("127.0.0.1", "127.0.0.2", "::1", "192.168.1.20", "fd00::5", "::ffff:192.168.1.20"):
        assert is_own_address(host), host
    for host in ("192.168.1.7", "fd00::9", "10.1.2.3", "::ffff:10.1.2.3"):  # a neighbour on the LAN is not this machine
        assert not is_own_address(host), host


def test_bind_and_announced_hosts_follow_the_p2p_addresses() -> None:
    assert direct_hosts(("/ip4/127.0.0.1/tcp/0",), (), []) == ("127.0.0.1", "127.0.0.1")
    assert direct_hosts(("/ip4/0.0.0.0/tcp/0",), ("/ip4/203.0.113.5/tcp/4000",), []) == ("0.0.0.0", "203.0.113.5")
    seen = ["/ip4/127.0.0.1/tcp/5000", "/ip4/192.168.1.20/tcp/5000"]
    assert direct_hosts(("/ip4/0.0.0.0/tcp/0",), (), seen) == ("0.0.0.0", "192.168.1.20")
    assert direct_hosts(("/ip6/::/tcp/0",), (), ["/ip4/127.0.0.1/tcp/5000"]) == ("0.0.0.0", "127.0.0.1")


def test_hellos_name_only_streaming_rpcs_and_greetings_name_the_server() -> None:
    assert method_of_hello(hello("rpc_forward_stream")) == "rpc_forward_stream"
    for bad in (b"BLOSSOM-DIRECT/1 rpc_info\n", b"BLOSSOM-DIRECT/1 rpc_inference", b"GET / HTTP/1.1\r\n", b"\n"):
        assert method_of_hello(bad) is None, bad
    assert check_greeting(b"BLOSSOM-DIRECT/1 Qm", "QmPeer", "x") is None  # not complete yet
    assert check_greeting(server_greeting("QmPeer") + b"\x01", "QmPeer", "x") == b"\x01"
    with pytest.raises(RemoteCallError, match="x is not server QmPeer's direct port"):
        check_greeting(server_greeting("QmOther"), "QmPeer", "x")
    with pytest.raises(RemoteCallError, match="is not server QmPeer's direct port"):
        check_greeting(b"z" * 200, "QmPeer", "x")  # a long line with no end: not a greeting
