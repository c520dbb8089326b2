"""How others reach this PC, in words: the worker's report, the dashboard's line (technical tooltip) and the tray."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from app.reachability import LOCAL_ONLY, RELAYED, WHAT_TO_DO, describe_reachability
from app.worker.messages import ServeRequest, StatusEvent, WorkerState
from app.worker.node import WorkerNode
from core.relay_protocol import Reachability
from core.server.reachability import ReachabilityStatus
from core.server.stats import ServingStats

BOOTSTRAP = "/ip4/10.77.0.1/tcp/31337/p2p/QmSeed"
JOINED = ServeRequest("/m", private_swarm=False, initial_peers=(BOOTSTRAP,), host="0.0.0.0")
BLOCKED = "2 peer(s) could not connect to 10.78.1.2:40123 (a home router or firewall blocks incoming connections)"


def reported(status: ReachabilityStatus, own_addresses: bool = False) -> StatusEvent:
    """The StatusEvent a worker serving with a server of this reachability sends (the real WorkerNode code)."""
    node = WorkerNode(lambda event: None)
    node.state = WorkerState.SERVING
    node.server = SimpleNamespace(reachability=status, stats=ServingStats())  # the server's real counters
    host = status.address.rsplit(":", 1)[0]
    if host:
        node._own_address[host] = own_addresses
    return node.snapshot()


@pytest.mark.parametrize("status, own, text, tone", [
    (ReachabilityStatus(Reachability.DIRECT, address="10.77.0.2:34407"), False,
     "Others can reach this PC directly (router port 34407 mapped automatically).", "good"),
    (ReachabilityStatus(Reachability.DIRECT, address="203.0.113.9:31330"), True,
     "Others can reach this PC directly (at 203.0.113.9:31330).", "good"),
    (ReachabilityStatus(Reachability.RELAYED, relays=("QmSeed",), reason=BLOCKED), True, RELAYED, "neutral"),
    (ReachabilityStatus(Reachability.UNREACHABLE, reason=f"{BLOCKED}, and no relay took it (QmSeed: refused)"), True,
     "Nobody can reach this PC: your router or firewall blocks incoming connections, and no computer in the swarm "
     f"could relay for it. {WHAT_TO_DO}", "bad"),
    (ReachabilityStatus(Reachability.UNREACHABLE, reason="no peer answered a dial-back request (x: timeout), and no "
                        "relay took it (the swarm has no public peer to relay through)"), True,
     "Nobody can reach this PC: no other computer in the swarm answered when asked to check, and no computer in the "
     f"swarm could relay for it. {WHAT_TO_DO}", "bad"),
])
def test_each_outcome_in_words_with_the_technical_line_as_tooltip(status, own, text, tone) -> None:
    event = reported(status, own)
    assert event.reachability == status.reachability.value and event.reachability_reason == status.reason
    line = describe_reachability(event, JOINED)
    assert (line.text, line.tone) == (text, tone)
    assert line.tooltip == f"This server is {status.describe()}"


def test_a_swarm_on_this_pc_says_so_and_nothing_shows_when_not_serving() -> None:
    direct = reported(ReachabilityStatus(Reachability.DIRECT, address="127.0.0.1:40001"))
    assert describe_reachability(direct, ServeRequest("/m")).text == LOCAL_ONLY  # the private demo swarm
    local = ServeRequest("/m", private_swarm=False, initial_peers=("/ip4/127.0.0.1/tcp/5/p2p/QmX",))
    assert describe_reachability(direct, local).text == LOCAL_ONLY
    assert describe_reachability(StatusEvent(WorkerState.PAUSED), JOINED) is None
    node = WorkerNode(lambda event: None)
    node.state = WorkerState.STARTING  # the server is still learning it: nothing is said yet
    node.server = SimpleNamespace(reachability=ReachabilityStatus(Reachability.UNREACHABLE, reason="not checked yet"))
    assert node.snapshot().reachability == ""


def test_the_dashboard_and_the_tray_show_the_line_and_follow_its_changes(qtbot, make_window) -> None:
    window = make_window()
    window.controller.worker.last_request = JOINED  # as after a start (no worker runs in this test)
    serving = dict(state=WorkerState.SERVING, model_name="m", start_block=2, end_block=4, total_blocks=4)
    relayed = reported(ReachabilityStatus(Reachability.RELAYED, relays=("QmSeed",), reason=BLOCKED))
    window.controller.worker.status_updated.emit(StatusEvent(**serving, reachability="relayed",
                                                             reachability_detail=relayed.reachability_detail))
    label = window.dashboard.status.reachability
    assert label.isVisibleTo(window) and label.text() == RELAYED
    assert label.toolTip().startswith("This server is reachable through relay QmSeed (no direct connection: 2 peer(s)")
    assert window.tray.icon.toolTip() == f"Blossom: Serving\nBlocks 2–3 of m\n{RELAYED}"

    mapped = reported(ReachabilityStatus(Reachability.DIRECT, address="10.77.0.2:34407"))  # the keeper found a path
    window.controller.worker.status_updated.emit(StatusEvent(**serving, **{
        key: getattr(mapped, key) for key in ("reachability", "reachability_detail", "reachability_address",
                                              "reachability_via_router")}))
    assert label.text() == "Others can reach this PC directly (router port 34407 mapped automatically)."
    assert label.toolTip() == "This server is reachable directly at 10.77.0.2:34407"

    window.controller.worker.status_updated.emit(StatusEvent(WorkerState.PAUSED, "Blocks 2..3 are free for others"))
    assert not label.isVisibleTo(window)
    assert window.tray.icon.toolTip() == "Blossom: Paused\nBlocks 2..3 are free for others"
