"""Can clients reach this server? Learn it from other peers, and become reachable if not.

1. **Dial back.** Other peers (the initial peers first) are asked to open a plain TCP connection to
   each address this server listens on, as seen by libp2p: its own addresses and, when the home
   router speaks UPnP-IGD / NAT-PMP, the port the p2p daemon mapped there (hivemind's ``nat_port_map``,
   on by default; the mapped address appears a few seconds after start, so a failed first check is
   repeated once it could have). Any address that connects: **direct**.
2. **Relay.** Otherwise the server reserves a slot with up to :data:`RELAYS_WANTED` public peers
   (:mod:`core.server.relay`) and announces them: **relayed**. Clients then reach it through them.
3. Neither: **unreachable**, with the reason and what to do; such a server announces no block as online.

:class:`ReachabilityKeeper` renews the reservations, replaces a relay that stopped answering, and
checks for a direct path again now and then; ``on_change`` is called whenever the answer changes.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from hivemind.p2p import P2P, PeerID
from hivemind.proto import runtime_pb2

from core.relay_protocol import (
    DIAL_BACK_HANDLE, DIAL_BACK_TIMEOUT, MAX_DIAL_BACK_ADDRESSES, RESERVATION_RENEW, RESERVE_HANDLE, Reachability,
)
from core.utils.event_loop import EventLoopThread
from core.wire import pack_metadata, unpack_metadata

logger = logging.getLogger(__name__)

RELAYS_WANTED = 2
HELPERS_ASKED = 3
CALL_TIMEOUT = 10.0
PORT_MAPPING_WAIT = 12.0
"""Seconds after the p2p daemon's start by which a router's port mapping has shown up (seen: ~5.5 s)."""
DIRECT_RECHECK_PERIOD = 300.0


@dataclass(frozen=True)
class ReachabilityStatus:
    """How clients reach this server, and why."""

    reachability: Reachability
    address: str = ""  # the "host:port" others dialled (direct)
    relays: tuple[str, ...] = ()  # peer ids of the relays holding a reservation (relayed)
    reason: str = ""  # why no direct connection (relayed, unreachable)

    def describe(self) -> str:
        """One line a person can act on."""
        if self.reachability == Reachability.DIRECT:
            return f"reachable directly at {self.address}" if self.address else f"assumed reachable directly ({self.reason})"
        if self.reachability == Reachability.RELAYED:
            return (f"reachable through relay {', '.join(self.relays)} (no direct connection: {self.reason}); "
                    f"clients are served, with one more network leg per step")
        return (f"not reachable: {self.reason}. Enable UPnP on your router, forward the port (--port) to this "
                f"PC and pass --announce_maddrs /ip4/<public ip>/tcp/<port>, or join a swarm with a public relay")


def peer_ids_of(maddrs: Sequence[str]) -> list[str]:
    """The peer ids named by multiaddrs ending in ``/p2p/<id>``."""
    return list(dict.fromkeys(str(maddr).rsplit("/p2p/", 1)[1] for maddr in maddrs if "/p2p/" in str(maddr)))


def candidate_addresses(visible_maddrs: Sequence[str]) -> list[str]:
    """``host:port`` of every IPv4 TCP address libp2p lists for this peer, loopback aside (another machine's
    loopback is not this one's)."""
    found: list[str] = []
    for maddr in map(str, visible_maddrs):
        parts = maddr.split("/")
        if len(parts) < 5 or parts[1] != "ip4" or parts[3] != "tcp" or "p2p-circuit" in parts:
            continue
        address = ipaddress.IPv4Address(parts[2])
        if address.is_loopback or address.is_unspecified:
            continue
        found.append(f"{parts[2]}:{parts[4]}")
    return list(dict.fromkeys(found))[:MAX_DIAL_BACK_ADDRESSES]


def helpers_are_local(initial_peers: Sequence[str]) -> bool:
    """Whether the swarm's initial peers are on this machine (a private swarm on 127.0.0.1)."""
    return bool(initial_peers) and all("/ip4/127." in str(maddr) for maddr in initial_peers)


async def _call(p2p: P2P, peer_id: str, handle: str, metadata: dict) -> dict:
    response = await asyncio.wait_for(p2p.call_protobuf_handler(
        PeerID.from_base58(peer_id), handle, runtime_pb2.ExpertRequest(metadata=pack_metadata(metadata)),
        runtime_pb2.ExpertResponse), CALL_TIMEOUT)
    answer = unpack_metadata(response.metadata)
    if answer.get("error"):
        raise RuntimeError(str(answer["error"]))
    return answer


@dataclass(frozen=True)
class DialBackResult:
    """What the peers asked to dial back said."""

    address: str  # the first candidate that connected, or ""
    reason: str  # why none connected
    answered: int  # how many peers answered at all (0: the question is open, e.g. only older peers)


async def dial_back(p2p: P2P, helpers: Sequence[str], candidates: Sequence[str]) -> DialBackResult:
    """Ask ``helpers`` to dial ``candidates``."""
    if not candidates:
        return DialBackResult("", "this server listens on no address others could dial", 1)
    asked = list(helpers)[:HELPERS_ASKED]
    if not asked:
        return DialBackResult("", "no other peer to ask (pass --initial_peers)", 0)
    answers = await asyncio.gather(*(_call(p2p, peer, DIAL_BACK_HANDLE, {"addresses": list(candidates)})
                                     for peer in asked), return_exceptions=True)
    reached: set[str] = set()
    errors: list[str] = []
    for peer, answer in zip(asked, answers):
        if isinstance(answer, BaseException):
            errors.append(f"{peer[-8:]}: {answer or type(answer).__name__}")
            continue
        reached.update(str(address) for address in answer.get("reachable", []))
    answered = len(asked) - len(errors)
    for address in candidates:
        if address in reached:
            return DialBackResult(address, "", answered)
    if not answered:
        return DialBackResult("", "no peer answered a dial-back request (" + "; ".join(errors) + ")", 0)
    return DialBackResult("", f"{answered} peer(s) could not connect to {', '.join(candidates)} "
                                  f"(a home router or firewall blocks incoming connections)", answered)


async def reserve(p2p: P2P, relay: str) -> None:
    """Reserve (or renew) a slot with ``relay``; raises with the relay's reason if it refuses."""
    await _call(p2p, relay, RESERVE_HANDLE, {})


class ReachabilityKeeper(threading.Thread):
    """Finds out how clients reach this server and keeps it that way (see the module docstring).

    ``helpers()`` lists peer ids that may be asked to dial back and serve as relays (initial peers
    first, then directly reachable servers); ``on_change(status)`` is called when the status changes.
    """

    def __init__(self, p2p: P2P, loop: EventLoopThread, helpers: Callable[[], list[str]], started_at: float,
                 on_change: Callable[[ReachabilityStatus], None]) -> None:
        super().__init__(name="blossom-reachability", daemon=True)
        self.p2p, self.loop, self.helpers = p2p, loop, helpers
        self.started_at, self.on_change = started_at, on_change
        self.status = ReachabilityStatus(Reachability.UNREACHABLE, reason="not checked yet")
        self._stop_event = threading.Event()
        self._last_direct_check = 0.0
        self._why_not_direct = ""

    def check(self, keep: Sequence[str] = ()) -> ReachabilityStatus:
        """Decide now: a direct path, else relays (renewing ``keep`` first); returns and keeps the status."""
        status = self._check_direct()
        if status.reachability != Reachability.DIRECT:
            self._why_not_direct = status.reason
            status = self._find_relays(keep)
        self._set(status)
        return status

    def _check_direct(self) -> ReachabilityStatus:
        helpers = self.helpers()
        result = self._dial_back(helpers)
        wait = self.started_at + PORT_MAPPING_WAIT - time.monotonic()
        if not result.address and result.answered and wait > 0:
            logger.info("Not dialable yet; waiting %.0f s for a router port mapping before asking again", wait)
            if self._stop_event.wait(wait):
                return ReachabilityStatus(Reachability.UNREACHABLE, reason="stopping")
            result = self._dial_back(helpers)
        self._last_direct_check = time.monotonic()
        if result.address:
            return ReachabilityStatus(Reachability.DIRECT, address=result.address)
        if not result.answered:  # e.g. a swarm of older peers without the service: serve as before
            return ReachabilityStatus(Reachability.DIRECT, reason=f"not checked: {result.reason}")
        return ReachabilityStatus(Reachability.UNREACHABLE, reason=result.reason)

    def _dial_back(self, helpers: list[str]) -> DialBackResult:
        maddrs = [str(m) for m in self.loop.run(self.p2p.get_visible_maddrs(latest=True), timeout=CALL_TIMEOUT)]
        candidates = candidate_addresses(maddrs)
        return self.loop.run(dial_back(self.p2p, helpers, candidates), timeout=DIAL_BACK_TIMEOUT + 2 * CALL_TIMEOUT)

    def _find_relays(self, keep: Sequence[str]) -> ReachabilityStatus:
        """Renew ``keep`` and add relays among the helpers until :data:`RELAYS_WANTED` hold a reservation.
        The helpers (a DHT look-up) are read only when the kept relays are not enough."""

        def candidates() -> Iterator[str]:
            yield from keep
            yield from (helper for helper in self.helpers() if helper not in keep)

        relays: list[str] = []
        refusals: list[str] = []
        for relay in candidates():
            try:
                self.loop.run(reserve(self.p2p, relay), timeout=CALL_TIMEOUT + 5)
                relays.append(relay)
            except Exception as error:
                refusals.append(f"{relay[-8:]}: {error or type(error).__name__}")
            if len(relays) >= RELAYS_WANTED:
                break
        reason = self._why_not_direct
        if relays:
            return ReachabilityStatus(Reachability.RELAYED, relays=tuple(relays), reason=reason)
        why = "; ".join(refusals) or "the swarm has no public peer to relay through"
        return ReachabilityStatus(Reachability.UNREACHABLE, reason=f"{reason}, and no relay took it ({why})")

    def _set(self, status: ReachabilityStatus) -> None:
        changed = status != self.status
        self.status = status
        if changed:
            logger.info("This server is %s", status.describe())
            self.on_change(status)

    def run(self) -> None:
        while not self._stop_event.wait(RESERVATION_RENEW):
            try:
                self._keep()
            except Exception:
                logger.warning("Could not check this server's reachability; will retry", exc_info=True)

    def _keep(self) -> None:
        """Look for a direct path again now and then; meanwhile renew (or replace) the relays."""
        if time.monotonic() - self._last_direct_check > DIRECT_RECHECK_PERIOD:
            self.check(keep=self.status.relays)
        elif self.status.reachability != Reachability.DIRECT:
            self._set(self._find_relays(keep=self.status.relays))

    def stop(self) -> None:
        self._stop_event.set()
