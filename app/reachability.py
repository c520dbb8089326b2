"""How other computers reach this PC's server, in words a volunteer understands (no Qt, no torch).

The worker reports what the block server learned (:class:`~app.worker.messages.StatusEvent`'s
``reachability*`` fields: ``direct``, ``relayed`` or ``unreachable``, see
:mod:`core.server.reachability`); :func:`describe_reachability` turns that into one line for the
dashboard and the tray, keeping the server's own technical line for the tooltip. The wording is
here, not in a widget, so that it is tested without a window and shared by both places.
"""
from __future__ import annotations

from dataclasses import dataclass

from app.worker.messages import ServeRequest, StatusEvent

GOOD, NEUTRAL, BAD = "good", "neutral", "bad"

LOCAL_ONLY = "This swarm is on this PC only: other computers cannot reach it (nothing leaves this PC)."
RELAYED = ("Others reach this PC through a relay (your router blocks incoming connections; this works, "
           "a little slower).")
WHAT_TO_DO = ("What to do: enable UPnP on your router, or forward a port to this PC and set it in Settings → Port, "
              "then restart serving; or join a swarm that has a public peer to relay through.")


@dataclass(frozen=True)
class ReachabilityLine:
    """What the dashboard shows: ``text`` for the volunteer, ``tooltip`` the server's technical line,
    ``tone`` one of ``"good"``, ``"neutral"``, ``"bad"`` (the colour)."""

    text: str
    tooltip: str
    tone: str


def is_local_swarm(request: ServeRequest | None) -> bool:
    """The worker serves a swarm on this PC only: its own private swarm, or one whose peers are all on 127.x."""
    if request is None:
        return False
    return request.private_swarm or (bool(request.initial_peers)
                                     and all("/ip4/127." in peer for peer in request.initial_peers))


def _why_unreachable(reason: str) -> str:
    """The server's reason (see ``core.server.reachability``) in plain words, or as it is when unknown."""
    why_not_direct, _, relay_part = reason.partition(", and no relay took it")
    if "blocks incoming connections" in why_not_direct or "could not connect" in why_not_direct:
        words = "your router or firewall blocks incoming connections"
    elif "no peer answered" in why_not_direct:
        words = "no other computer in the swarm answered when asked to check"
    elif "listens on no address" in why_not_direct:
        words = "it listens on no address other computers could use"
    else:
        words = why_not_direct.strip() or "the reason is unknown"
    if relay_part:
        words += ", and no computer in the swarm could relay for it"
    return words


def describe_reachability(status: StatusEvent, request: ServeRequest | None = None) -> ReachabilityLine | None:
    """The line for ``status`` (``None`` when the worker reports no reachability, e.g. not serving).

    ``request`` is what the worker serves: a swarm on this PC only is said to be just that.
    """
    kind = status.reachability
    if not kind:
        return None
    tooltip = f"This server is {status.reachability_detail}" if status.reachability_detail else ""
    host = status.reachability_address.rsplit(":", 1)[0]
    if is_local_swarm(request) or host.startswith("127."):
        return ReachabilityLine(LOCAL_ONLY, tooltip, NEUTRAL)
    if kind == "direct":
        if not status.reachability_address:
            return ReachabilityLine("Others can probably reach this PC directly (it could not be checked: "
                                    "no computer in the swarm answered).", tooltip, GOOD)
        port = status.reachability_address.rsplit(":", 1)[-1]
        how = (f"router port {port} mapped automatically" if status.reachability_via_router
               else f"at {status.reachability_address}")
        return ReachabilityLine(f"Others can reach this PC directly ({how}).", tooltip, GOOD)
    if kind == "relayed":
        return ReachabilityLine(RELAYED, tooltip, NEUTRAL)
    return ReachabilityLine(f"Nobody can reach this PC: {_why_unreachable(status.reachability_reason)}. {WHAT_TO_DO}",
                            tooltip, BAD)
