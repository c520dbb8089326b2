"""The latency lab: hosts in network namespaces whose links have a configured one-way delay (and optionally
a bandwidth cap), for measuring a swarm as it behaves between homes, 20-150 ms apart.

    with latency_lab(["client", "bootstrap", "s1", "s2"], one_way_ms=50) as lab:
        report = lab.measure_link("client", "s1")     # verifies the delay: ICMP + TCP round trips, 10 MiB
        lab["s1"].popen([...])                        # processes run inside a host's namespace
        lab.switch.set_delays(10)                     # change the delay while everything runs

Built on :mod:`tests.netlab`: the hosts are the lab internet's public hosts (10.77.0.N), but the ports
of the internet namespace's bridge are handed to a delay switch (:mod:`tests.delay_switch`, a user-space
process, because this kernel has no netem) that forwards every frame between hosts after the one-way
delay of that pair of hosts. :class:`DelaySwitch` also works on a hand-built :class:`tests.netlab.Lab`,
home routers included, for latency + NAT scenarios. Everything (namespaces, veths, the switch, probes
and any process started with ``Host.popen``) is removed when the ``with`` block ends, also on failure.

As a script, the probe both sides of :meth:`LatencyLab.measure_link` run inside the namespaces::

    python -m tests.latency_lab probe-server PORT
    python -m tests.latency_lab probe IP PORT [--pings N] [--bytes B]
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import socket
import statistics
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence

from tests.netlab import Host, Lab, _sh, internet_port

PROBE_PORT = 7500
TRANSFER_BYTES = 10 << 20
SWITCH_START_TIMEOUT = 20.0
REPLY_TIMEOUT = 10.0


def _env() -> dict[str, str]:
    from benchmarks.home_lab import lab_env

    return lab_env()


class DelaySwitch:
    """Replaces the lab internet's bridge by :mod:`tests.delay_switch` for ``hosts`` (public hosts or home
    routers, by name) while the ``with`` block runs. Add every host before entering: a host added later
    stays on the bridge and reaches none of these."""

    def __init__(self, lab: Lab, hosts: Mapping[str, Host], one_way_ms: float,
                 pairs: Sequence[tuple[str, str, float]] = (), rate_mbit: Optional[float] = None,
                 queue_ms: float = 200.0) -> None:
        from tests.delay_switch import DelayTable, Schedule

        Schedule(DelayTable(one_way_ms, list(pairs)), rate_mbit, queue_ms)  # bad values fail here, not in the lab
        unknown = {name for pair in pairs for name in pair[:2]} - set(hosts)
        if unknown:
            raise ValueError(f"delays given for hosts the switch does not connect: {sorted(unknown)}")
        self.lab, self.hosts = lab, dict(hosts)
        self.one_way_ms, self.pairs = float(one_way_ms), [tuple(pair) for pair in pairs]
        self.rate_mbit, self.queue_ms = rate_mbit, queue_ms
        self.log_path = Path(lab.workdir) / "delay-switch.log"
        self._process: Optional[subprocess.Popen] = None
        self._requests = 0

    def __enter__(self) -> "DelaySwitch":
        ports = {name: internet_port(host.ip) for name, host in self.hosts.items()}
        config = Path(self.lab.workdir) / "delay-switch.json"
        config.write_text(json.dumps({"ports": ports, "one_way_ms": self.one_way_ms, "pairs": self.pairs,
                                      "rate_mbit": self.rate_mbit, "queue_ms": self.queue_ms}))
        for port in ports.values():
            _sh(["ip", "-n", self.lab.internet_ns, "link", "set", port, "nomaster"])
        self.log_path.unlink(missing_ok=True)  # the log is appended to; answers of an earlier lab must not count
        switch_host = Host(self.lab, "switch", self.lab.internet_ns, "")
        self._process = switch_host.popen([sys.executable, "-m", "tests.delay_switch", str(config)], env=_env(),
                                          log_path=self.log_path, stdin=subprocess.PIPE)
        try:
            self._wait_for(r"READY .*", SWITCH_START_TIMEOUT, "the delay switch to open its ports")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the switch: end of its input, then a bounded wait (the lab kills it anyway on exit)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(OSError):
            process.stdin.close()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def one_way(self, first: str, second: str) -> float:
        """The configured one-way delay between two hosts, in milliseconds."""
        for a, b, ms in self.pairs:
            if {a, b} == {first, second}:
                return float(ms)
        return self.one_way_ms

    def set_delays(self, one_way_ms: float, pairs: Sequence[tuple[str, str, float]] = ()) -> None:
        """Change the delays from now on (frames already on their way keep theirs)."""
        from tests.delay_switch import DelayTable

        DelayTable(one_way_ms, list(pairs))
        ident = self._request({"one_way_ms": one_way_ms, "pairs": [list(pair) for pair in pairs]})
        self._wait_for(rf"APPLIED {ident}\n", REPLY_TIMEOUT, "the delay switch to apply new delays")
        self.one_way_ms, self.pairs = float(one_way_ms), [tuple(pair) for pair in pairs]

    def stats(self) -> dict:
        """Frames forwarded and dropped, and how late the switch sent them (ms, p50/p99/max)."""
        ident = self._request({"stats": True})
        return json.loads(self._wait_for(rf"STATS {ident} (\{{.*\}})\n", REPLY_TIMEOUT,
                                         "the delay switch's statistics").group(1))

    def _request(self, message: dict) -> int:
        if self._process is None or self._process.poll() is not None:
            raise RuntimeError(f"the delay switch is not running; its log:\n{self._log()[-2000:]}")
        self._requests += 1
        self._process.stdin.write((json.dumps({"id": self._requests, **message}) + "\n").encode())
        self._process.stdin.flush()
        return self._requests

    def _log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _wait_for(self, pattern: str, timeout: float, what: str) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self._log())
            if match:
                return match
            if self._process is None or self._process.poll() is not None or time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout:.0f} s for {what}; it did not answer. Its log:\n"
                                   f"{self._log()[-2000:]}")
            time.sleep(0.02)


@dataclass
class LinkReport:
    """What :meth:`LatencyLab.measure_link` measured between two hosts (milliseconds, MiB/s)."""

    source: str
    target: str
    configured_rtt_ms: float
    icmp_rtt_ms: float  # median of the ICMP echo round trips
    tcp_rtt_ms: float  # median of 1-byte ping-pongs on one TCP connection
    transfer_bytes: int
    transfer_s: float  # from the first byte sent until the receiver's checksum came back
    throughput_mib_s: float

    def excess_ms(self) -> float:
        """The larger distance of the two measured round trips from the configured one."""
        return max(abs(self.icmp_rtt_ms - self.configured_rtt_ms), abs(self.tcp_rtt_ms - self.configured_rtt_ms))

    def deviation(self) -> float:
        """:meth:`excess_ms` relative to the configured round trip (infinite when that is zero)."""
        return self.excess_ms() / self.configured_rtt_ms if self.configured_rtt_ms else float("inf")

    def line(self) -> str:
        return (f"{self.source}->{self.target}: RTT configured {self.configured_rtt_ms:.1f} ms, measured ICMP "
                f"{self.icmp_rtt_ms:.2f} ms, TCP {self.tcp_rtt_ms:.2f} ms (off by {self.excess_ms():.2f} ms, "
                f"{self.deviation() * 100:.1f} %); "
                f"{self.transfer_bytes / 2**20:.0f} MiB over TCP in {self.transfer_s:.2f} s = "
                f"{self.throughput_mib_s:.1f} MiB/s")


class LatencyLab:
    """Named hosts on a delayed internet; made by :func:`latency_lab`."""

    def __init__(self, lab: Lab, hosts: dict[str, Host], switch: DelaySwitch) -> None:
        self.lab, self.hosts, self.switch = lab, hosts, switch
        self._probe_port = PROBE_PORT

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def measure_link(self, source: str, target: str, pings: int = 10,
                     transfer_bytes: int = TRANSFER_BYTES, timeout: float = 120.0) -> LinkReport:
        """Round trips (ICMP and TCP, after one warm-up each) and a checked TCP transfer from ``source`` to
        ``target``, measured by probe processes inside their namespaces."""
        src, dst = self.hosts[source], self.hosts[target]
        port, self._probe_port = self._probe_port, self._probe_port + 1
        server = dst.popen([sys.executable, "-m", "tests.latency_lab", "probe-server", str(port)], env=_env(),
                           log_path=Path(self.lab.workdir) / f"probe-{target}-{port}.log")
        try:
            dst.wait_for_port(port, timeout=20)
            result = src.run([sys.executable, "-m", "tests.latency_lab", "probe", dst.ip, str(port), "--pings",
                              str(pings), "--bytes", str(transfer_bytes), "--timeout", str(timeout)],
                             env=_env(), timeout=timeout + 30)
        finally:
            server.kill()
            server.wait(10)
        measured = json.loads(result.stdout.strip().splitlines()[-1])
        return LinkReport(source, target, 2 * self.switch.one_way(source, target), **measured)


@contextlib.contextmanager
def latency_lab(names: Sequence[str], one_way_ms: float, pairs: Sequence[tuple[str, str, float]] = (),
                rate_mbit: Optional[float] = None, workdir: Optional[os.PathLike | str] = None) -> Iterator[LatencyLab]:
    """A lab of public hosts called ``names`` (10.77.0.1, .2, ... in that order) behind a delay switch."""
    with Lab(workdir) as lab:
        hosts = {name: lab.add_public(name) for name in names}
        with DelaySwitch(lab, hosts, one_way_ms, pairs, rate_mbit) as switch:
            yield LatencyLab(lab, hosts, switch)


# ---- the probe (runs inside the namespaces) -------------------------------------------------------


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def icmp_rtts(ip: str, count: int, timeout: float) -> list[float]:
    """Seconds of ``count`` ICMP echo round trips to ``ip`` (raw socket: root)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = os.getpid() & 0xFFFF
    rtts = []
    try:
        for sequence in range(count):
            payload = bytes(56)
            header = struct.pack("!BBHHH", 8, 0, 0, ident, sequence)
            packet = struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident, sequence) + payload
            began = time.perf_counter()
            deadline = began + timeout
            sock.sendto(packet, (ip, 0))
            while True:
                sock.settimeout(max(0.001, deadline - time.perf_counter()))
                try:
                    data = sock.recv(2048)
                except socket.timeout:
                    raise TimeoutError(f"no ICMP echo reply from {ip} within {timeout} s") from None
                start = (data[0] & 0x0F) * 4
                kind, _, _, their_id, their_sequence = struct.unpack("!BBHHH", data[start:start + 8])
                if kind == 0 and their_id == ident and their_sequence == sequence:
                    rtts.append(time.perf_counter() - began)
                    break
    finally:
        sock.close()
    return rtts


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"the peer closed after {len(data)} of {size} bytes")
        data += chunk
    return data


def probe(ip: str, port: int, pings: int, size: int, timeout: float) -> dict:
    """What :class:`LinkReport` holds, measured from here to a :func:`probe_server` at ``ip:port``."""
    icmp = icmp_rtts(ip, pings + 1, timeout)[1:]  # the first also resolves the address (ARP)
    with socket.create_connection((ip, port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"E")
        tcp = []
        for _ in range(pings + 1):
            began = time.perf_counter()
            sock.sendall(b"x")
            _recv_exactly(sock, 1)
            tcp.append(time.perf_counter() - began)
    payload = os.urandom(size)
    with socket.create_connection((ip, port), timeout=timeout) as sock:
        began = time.perf_counter()
        sock.sendall(b"S" + struct.pack("!Q", size))
        sock.sendall(payload)
        digest = _recv_exactly(sock, 32)
        elapsed = time.perf_counter() - began
    if digest != hashlib.sha256(payload).digest():
        raise RuntimeError("the bytes that arrived differ from the bytes sent")
    return {"icmp_rtt_ms": statistics.median(icmp) * 1000, "tcp_rtt_ms": statistics.median(tcp[1:]) * 1000,
            "transfer_bytes": size, "transfer_s": elapsed, "throughput_mib_s": size / 2**20 / elapsed}


def probe_server(port: int) -> None:
    """Serve probes one connection at a time: ``E`` echoes bytes back; ``S`` + length answers the SHA-256."""
    server = socket.create_server(("0.0.0.0", port), reuse_port=True)
    while True:
        conn, _ = server.accept()
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            mode = conn.recv(1)
            if mode == b"E":
                while chunk := conn.recv(65536):
                    conn.sendall(chunk)
            elif mode == b"S":
                remaining = struct.unpack("!Q", _recv_exactly(conn, 8))[0]
                digest = hashlib.sha256()
                while remaining:
                    chunk = conn.recv(min(remaining, 1 << 20))
                    if not chunk:
                        break
                    digest.update(chunk)
                    remaining -= len(chunk)
                conn.sendall(digest.digest())


def main() -> None:
    parser = argparse.ArgumentParser(description="latency-lab probes (run inside lab hosts)")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("probe-server")
    serve.add_argument("port", type=int)
    measure = sub.add_parser("probe")
    measure.add_argument("ip")
    measure.add_argument("port", type=int)
    measure.add_argument("--pings", type=int, default=10)
    measure.add_argument("--bytes", type=int, default=TRANSFER_BYTES)
    measure.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    if args.command == "probe-server":
        probe_server(args.port)
    else:
        print(json.dumps(probe(args.ip, args.port, args.pings, args.bytes, args.timeout)))


if __name__ == "__main__":
    main()
