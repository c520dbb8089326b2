"""A user-space Ethernet switch that delays every frame: the latency lab's stand-in for ``netem``.

Why a switch and not delaying TCP proxies: this kernel has no netem qdisc, so delay has to be added
in user space. Proxies would only delay the TCP connections someone thought of routing through them,
and libp2p peers announce and dial their own addresses (and learn each other's from the DHT), so every
address would need rewriting. A switch between the hosts delays *everything* on the wire (ARP, ICMP,
TCP, UDP), the hosts keep their real addresses, and nothing above the link needs to know.

How: the switch runs inside the lab's internet namespace and owns the far end of each host's veth
pair (an ``AF_PACKET`` socket per port). A frame read on one port is forwarded to the port that
learned its destination MAC (broadcast and unknown destinations go to every other port, so ARP
works), at its arrival time + the one-way delay configured for that pair of hosts, through a heap
keyed by due time. Details that make the delay exact:

- the arrival time is the kernel's receive timestamp (``SO_TIMESTAMPNS``), not the moment Python got
  round to reading the frame;
- the loop waits with ``select`` (microsecond timeouts; ``epoll`` rounds up to whole milliseconds)
  and runs under ``SCHED_FIFO`` when allowed, so a busy machine wakes it on time;
- ``PACKET_VNET_HDR`` keeps the veth's checksum and segmentation offloads intact across the switch:
  a frame whose checksum the sender left to the "hardware" (or a 64 KiB TCP segment) is handed on
  with that state instead of arriving with a bad checksum; no ``ethtool`` needed in the hosts.

An optional bandwidth cap models each host's access link: a frame is serialised on the sender's
uplink and on the receiver's downlink at ``rate_mbit`` (queues wait, frames that would queue longer
than ``queue_ms`` are dropped, as a router's full buffer would).

Run by :class:`tests.latency_lab.DelaySwitch` as ``python -m tests.delay_switch CONFIG.json``; it prints
``READY`` once every port is open. Each JSON line on stdin is a command, answered by one line on
stdout: ``{"id": N, "one_way_ms": D, "pairs": [[a, b, ms], ...]}`` sets the delays (frames already
queued keep their due time) and answers ``APPLIED N``; ``{"id": N, "stats": true}`` answers
``STATS N {json}`` (frames, drops, how late the sends were).
"""
from __future__ import annotations

import heapq
import json
import logging
import os
import select
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

logger = logging.getLogger(__name__)

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
PACKET_OUTGOING = 4
SO_TIMESTAMPNS = 35  # SCM_TIMESTAMPNS carries a struct timespec (two longs)
VNET_HEADER = 10  # struct virtio_net_hdr before every frame on a PACKET_VNET_HDR socket
MAX_FRAME = 65536 + 1024  # a GSO segment of the veth plus headers
BROADCAST_BIT = 0x01  # the group bit of the first destination byte (broadcast and multicast)


class DelayTable:
    """One-way delay in seconds between two named hosts: a default, and overrides per unordered pair."""

    def __init__(self, one_way_ms: float, pairs: Optional[list[tuple[str, str, float]]] = None) -> None:
        if one_way_ms < 0:
            raise ValueError(f"one_way_ms must be >= 0, got {one_way_ms}")
        self.default = one_way_ms / 1000.0
        self.pairs: dict[frozenset[str], float] = {}
        for first, second, ms in pairs or ():
            if ms < 0:
                raise ValueError(f"the delay between {first} and {second} must be >= 0 ms, got {ms}")
            self.pairs[frozenset((first, second))] = ms / 1000.0

    def between(self, first: str, second: str) -> float:
        return self.pairs.get(frozenset((first, second)), self.default)


@dataclass
class Link:
    """One host's access link in one direction, when capped: frames are serialised one after another at
    ``rate_mbit``; one that would wait longer than ``queue_s`` to start is dropped (returns None)."""

    rate_mbit: float
    queue_s: float
    free_at: float = 0.0

    def transmit(self, ready: float, size: int) -> Optional[float]:
        """When a frame of ``size`` bytes ready at ``ready`` has left the link, or None when it is dropped."""
        start = max(ready, self.free_at)
        if start - ready > self.queue_s:
            return None
        self.free_at = start + size * 8 / (self.rate_mbit * 1e6)
        return self.free_at


@dataclass
class Schedule:
    """When a frame from one host reaches another: the sender's uplink, the pair's delay, the receiver's
    downlink. Pure: the switch's timing, testable without sockets."""

    delays: DelayTable
    rate_mbit: Optional[float] = None
    queue_ms: float = 200.0
    _up: dict[str, Link] = field(default_factory=dict)
    _down: dict[str, Link] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rate_mbit is not None and not self.rate_mbit > 0:
            raise ValueError(f"rate_mbit must be a positive number of Mbit/s, got {self.rate_mbit}")

    def _link(self, links: dict[str, Link], host: str) -> Link:
        if host not in links:
            links[host] = Link(self.rate_mbit, self.queue_ms / 1000.0)
        return links[host]

    def due(self, source: str, target: str, arrival: float, size: int) -> Optional[float]:
        """The time the frame must leave the switch towards ``target``; None when a full queue drops it."""
        if self.rate_mbit is None:
            return arrival + self.delays.between(source, target)
        sent = self._link(self._up, source).transmit(arrival, size)
        if sent is None:
            return None
        return self._link(self._down, target).transmit(sent + self.delays.between(source, target), size)


def _open_port(ifname: str) -> socket.socket:
    # protocol 0 until bind: an AF_PACKET socket with ETH_P_ALL would see every interface's frames before that
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    try:
        sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    except OSError:  # kernels before 4.20: filtered by packet type below
        pass
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    for option, size in ((33, 8 << 20), (32, 8 << 20)):  # SO_RCVBUFFORCE, SO_SNDBUFFORCE (root)
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, size)
        except OSError:
            pass
    sock.bind((ifname, ETH_P_ALL))
    sock.setblocking(False)
    return sock


def _arrival(ancillary: list[tuple[int, int, bytes]]) -> Optional[float]:
    """The kernel's receive time of a frame; None when missing or not a wall-clock time (a departure time
    the sender's TCP stack set can survive the veth; it is on another clock)."""
    now = time.time()
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            seconds, nanoseconds = struct.unpack("qq", data[:16])
            stamp = seconds + nanoseconds * 1e-9
            if now - 1.0 < stamp <= now:
                return stamp
    return None


class Switch:
    """The forwarding loop over named ports (host name -> interface name); see the module docstring."""

    def __init__(self, ports: dict[str, str], schedule: Schedule) -> None:
        self.schedule = schedule
        self.names = list(ports)
        self.sockets = {name: _open_port(ifname) for name, ifname in ports.items()}
        self.by_fd = {sock.fileno(): name for name, sock in self.sockets.items()}
        self.macs: dict[bytes, str] = {}
        self.queue: list[tuple[float, int, str, bytes]] = []
        self.sequence = 0
        self.forwarded = self.dropped = self.unstamped = 0  # unstamped: frames timed on reading, not by the kernel
        self.lateness: list[float] = []  # seconds each send left after its due time (last 100000)

    def receive(self, name: str) -> None:
        """Read every frame waiting on port ``name`` and queue it towards its destination(s)."""
        sock = self.sockets[name]
        for _ in range(64):  # then back to the loop, so that a burst does not hold up frames that are due
            try:
                data, ancillary, _flags, address = sock.recvmsg(MAX_FRAME, 256)
            except (BlockingIOError, InterruptedError):
                return
            if address[2] == PACKET_OUTGOING or len(data) < VNET_HEADER + 14:
                continue
            arrival = _arrival(ancillary)
            if arrival is None:
                self.unstamped += 1
                arrival = time.time()
            destination, source = data[VNET_HEADER:VNET_HEADER + 6], data[VNET_HEADER + 6:VNET_HEADER + 12]
            self.macs[source] = name
            target = None if destination[0] & BROADCAST_BIT else self.macs.get(destination)
            for other in ([target] if target is not None else self.names):
                if other == name:
                    continue
                due = self.schedule.due(name, other, arrival, len(data) - VNET_HEADER)
                if due is None:
                    self.dropped += 1
                    continue
                self.sequence += 1
                heapq.heappush(self.queue, (due, self.sequence, other, data))

    def send_due(self) -> None:
        """Send every queued frame whose time has come."""
        now = time.time()
        while self.queue and self.queue[0][0] <= now:
            due, _, target, data = heapq.heappop(self.queue)
            try:
                self.sockets[target].send(data)
                self.forwarded += 1
            except OSError:  # the receiving veth's backlog is full: the frame is lost, as on a wire
                self.dropped += 1
            if len(self.lateness) < 100000:
                self.lateness.append(now - due)
            now = time.time()

    def stats(self) -> dict:
        late = sorted(self.lateness) or [0.0]
        return {"forwarded": self.forwarded, "dropped": self.dropped, "unstamped": self.unstamped,
                "queued": len(self.queue),
                "late_ms_p50": late[len(late) // 2] * 1000, "late_ms_p99": late[int(len(late) * 0.99)] * 1000,
                "late_ms_max": late[-1] * 1000}

    def serve(self, control: int) -> None:
        """Forward until the control file descriptor (stdin) reaches its end."""
        fds = [*self.by_fd, control]
        pending = b""
        while True:
            timeout = max(0.0, self.queue[0][0] - time.time()) if self.queue else None
            readable, _, _ = select.select(fds, [], [], timeout)
            for fd in readable:
                if fd != control:
                    self.receive(self.by_fd[fd])
                    continue
                chunk = os.read(control, 65536)
                if not chunk:
                    return
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    self.command(line.decode())
            self.send_due()

    def command(self, line: str) -> None:
        """Apply one control line (see the module docstring)."""
        request = json.loads(line)
        if request.get("stats"):
            print(f"STATS {request['id']} {json.dumps(self.stats())}", flush=True)
        else:
            self.schedule.delays = DelayTable(request["one_way_ms"], request.get("pairs"))
            print(f"APPLIED {request['id']}", flush=True)


def _realtime() -> str:
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
        return "SCHED_FIFO"
    except (OSError, AttributeError) as error:
        return f"normal priority ({error})"


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise SystemExit("usage: python -m tests.delay_switch CONFIG.json")
    config = json.loads(open(argv[0]).read())
    schedule = Schedule(DelayTable(config["one_way_ms"], config.get("pairs")), config.get("rate_mbit"),
                        config.get("queue_ms", 200.0))
    switch = Switch(config["ports"], schedule)
    print(f"READY ports={len(switch.sockets)} priority={_realtime()}", flush=True)
    try:
        switch.serve(sys.stdin.fileno())
    finally:
        print(f"STATS final {json.dumps(switch.stats())}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
