"""The network lab itself (tests/netlab.py): public hosts see each other, a home host gets out through
its router's NAT (the public side sees the router's WAN address) but cannot be reached from outside,
a UPnP port mapping made from inside the home opens exactly that port, and nothing is left behind.

Needs root with ``ip`` and ``iptables`` (CI runs as root); the UPnP test also needs miniupnpd-nftables,
nftables and miniupnpc. Otherwise the tests skip and say why."""
from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netlab import (
    Host,
    Lab,
    lab_unavailable_reason,
    require_lab,
)

pytestmark = pytest.mark.skipif(lab_unavailable_reason() is not None,
                                reason=lab_unavailable_reason() or "")

LISTENER = """
import socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", int(sys.argv[1])))
server.listen()
while True:
    conn, (ip, port) = server.accept()
    print(ip, flush=True)
    conn.close()
"""


def _listen(host: Host, port: int, log: Path) -> subprocess.Popen:
    proc = host.popen([sys.executable, "-c", LISTENER, str(port)], log_path=log)
    host.wait_for_port(port)
    return proc


def _sources(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab(tmp_path_factory.mktemp("netlab")) as built:
        built.add_public("pub1")
        built.add_public("pub2")
        home = built.add_home("home")
        built.add_host("pc", home=home)
        yield built


def test_public_hosts_reach_each_other(lab: Lab) -> None:
    pub1, pub2 = lab.public
    log = lab.workdir / "pub2.log"
    _listen(pub2, 7001, log)
    assert pub1.tcp_connect(pub2.ip, 7001)
    assert pub1.ip.startswith("10.77.0.") and pub2.ip.startswith("10.77.0.")


def test_home_host_gets_out_through_nat(lab: Lab) -> None:
    pub1 = lab.public[0]
    home = lab.homes[0]
    pc = home.hosts[0]
    log = lab.workdir / "pub1.log"
    _listen(pub1, 7002, log)
    assert pc.tcp_connect(pub1.ip, 7002)
    assert pc.ip.startswith("10.78.")
    assert _sources(log) == [home.wan_ip]  # masqueraded: the public side never sees 10.78.x


def test_public_host_cannot_reach_home_host(lab: Lab) -> None:
    pub1 = lab.public[0]
    home = lab.homes[0]
    pc = home.hosts[0]
    log = lab.workdir / "pc.log"
    _listen(pc, 7003, log)
    assert not pub1.tcp_connect(pc.ip, 7003, timeout=1)       # no route to the home LAN
    assert not pub1.tcp_connect(home.wan_ip, 7003, timeout=1)  # the router forwards nothing unasked
    assert _sources(log) == []


def test_upnp_mapping_opens_the_port(tmp_path: Path) -> None:
    require_lab(upnp=True)
    with Lab(tmp_path) as lab:
        pub = lab.add_public("pub")
        home = lab.add_home("home", upnp=True)
        pc = lab.add_host("pc", home=home)
        log = tmp_path / "pc.log"
        _listen(pc, 7004, log)
        assert not pub.tcp_connect(home.wan_ip, 40004, timeout=1)
        # -i: miniupnpc calls an IGD with an RFC 1918 external address "not connected?"
        added = pc.run(["upnpc", "-i", "-e", "netlab", "-a", pc.ip, "7004", "40004", "TCP"], timeout=30)
        assert f"external {home.wan_ip}:40004 TCP is redirected to internal {pc.ip}:7004" in added.stdout
        assert "40004->" in pc.run(["upnpc", "-i", "-l"], timeout=30).stdout
        assert pub.tcp_connect(home.wan_ip, 40004)
        assert _sources(log) == [pub.ip]  # DNAT only: the home host sees the real caller


def test_lab_leaves_nothing_behind(tmp_path: Path) -> None:
    with Lab(tmp_path) as lab:
        pub = lab.add_public("pub")
        home = lab.add_home("home")
        pc = lab.add_host("pc", home=home)
        proc = pc.popen([sys.executable, "-c", "import time; time.sleep(600)"])
        pub.popen(["sleep", "600"])
        prefix = lab.prefix
        assert len(lab.namespaces()) == 4
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert prefix + "-" not in listed
    assert proc.poll() is not None
