"""The worker's typed messages survive the JSON-lines wire; anything else is rejected with a clear error."""
from __future__ import annotations

import pytest

from app.worker.messages import (
    ErrorEvent,
    LogEvent,
    PauseCommand,
    ResumeCommand,
    ServeRequest,
    StartCommand,
    StatusEvent,
    StopCommand,
    WorkerState,
    decode,
    encode,
)
from core.errors import InvalidRequestError

MESSAGES = [
    StartCommand(ServeRequest("/models/m", private_swarm=False, initial_peers=("/ip4/1.2.3.4/tcp/1/p2p/Qm1",),
                              host="0.0.0.0", port=31330, num_blocks=8, block_indices=(4, 12), torch_dtype="bfloat16",
                              quant_type="nf4", device="cuda:1", attn_cache_tokens=4096, throughput=12.5,
                              drain_timeout=5.0)),
    StartCommand(ServeRequest("")),
    PauseCommand(),
    ResumeCommand(),
    StopCommand(),
    StatusEvent(WorkerState.SERVING, "ok", "m", 4, 12, 30, 2, 10, 200, 1, 3.5, 49.7, 8.0, "bfloat16", "nf4", "cuda:1",
                "QmPeer", ("/ip4/127.0.0.1/tcp/5/p2p/Qm2",)),
    StatusEvent(WorkerState.SERVING, reachability="relayed", reachability_detail="reachable through relay QmR (…)",
                reachability_reason="a home router or firewall blocks incoming connections"),
    StatusEvent(WorkerState.SERVING, reachability="direct", reachability_address="10.77.0.2:34407",
                reachability_via_router=True),
    LogEvent("WARNING", "core.server: something ✿ happened"),
    ErrorEvent("could not load block 3", fatal=True),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda message: type(message).__name__)
def test_round_trip(message) -> None:
    line = encode(message)
    assert "\n" not in line
    assert decode(line) == message
    assert decode(line.encode()) == message


@pytest.mark.parametrize("line, match", [
    ("not json", "not a worker message"),
    ('{"type": "FormatDisk"}', "not a worker message"),
    ('{"type": "ResumeCommand", "extra": 2}', "no field"),
    ('{"type": "StatusEvent", "state": "dancing"}', "malformed StatusEvent"),
    ('{"type": "StartCommand"}', "malformed StartCommand"),
])
def test_bad_lines_are_rejected(line: str, match: str) -> None:
    with pytest.raises(InvalidRequestError, match=match):
        decode(line)


def test_states_that_wait_for_a_transition() -> None:
    assert {state for state in WorkerState if state.busy} == {
        WorkerState.STARTING, WorkerState.PAUSING, WorkerState.RESUMING, WorkerState.STOPPING}
