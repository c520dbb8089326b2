"""Block choice is a pure function over the swarm's spans."""
import pytest

from core.dht.schema import RemoteSpanInfo, ServerInfo, ServerState
from core.server.block_selection import block_throughputs, choose_best_start, choose_move, claim_is_contested


def span(start: int, end: int, throughput: float = 10.0) -> RemoteSpanInfo:
    return RemoteSpanInfo(f"p{start}-{end}", start, end, ServerInfo(ServerState.ONLINE, throughput, start, end))


def test_empty_swarm_starts_at_block_zero():
    assert choose_best_start([], total_blocks=16, num_blocks=8) == 0


def test_second_server_takes_the_uncovered_half():
    assert choose_best_start([span(0, 8)], total_blocks=16, num_blocks=8) == 8


def test_fills_the_gap_between_servers():
    assert choose_best_start([span(0, 4), span(8, 12)], total_blocks=12, num_blocks=4) == 4


def test_weakest_block_wins_over_total():
    spans = [span(0, 4, throughput=1.0), span(4, 8, throughput=100.0)]
    assert choose_best_start(spans, total_blocks=8, num_blocks=4) == 0


def test_throughputs_add_up_per_block():
    assert block_throughputs([span(0, 2, 1.0), span(1, 3, 2.0)], 4) == [1.0, 3.0, 2.0, 0.0]


@pytest.mark.parametrize("num_blocks", [0, 9])
def test_rejects_impossible_sizes(num_blocks):
    with pytest.raises(ValueError):
        choose_best_start([], total_blocks=8, num_blocks=num_blocks)


def peer_span(peer: str, start: int, end: int, throughput: float = 10.0,
              state: ServerState = ServerState.ONLINE, claimed_at: float = 0.0) -> RemoteSpanInfo:
    return RemoteSpanInfo(peer, start, end, ServerInfo(state, throughput, start, end, claimed_at=claimed_at))


def test_the_earlier_of_two_overlapping_claims_stands():
    spans = [peer_span("B", 0, 4, state=ServerState.JOINING, claimed_at=100.0),
             peer_span("A", 2, 6, state=ServerState.JOINING, claimed_at=100.5)]
    assert claim_is_contested(spans, "A", 2, 6, claimed_at=100.5)
    assert not claim_is_contested(spans, "B", 0, 4, claimed_at=100.0)


def test_simultaneous_claims_are_settled_by_peer_id():
    spans = [peer_span("A", 0, 4, state=ServerState.JOINING, claimed_at=5.0),
             peer_span("B", 0, 4, state=ServerState.JOINING, claimed_at=5.0)]
    assert claim_is_contested(spans, "B", 0, 4, claimed_at=5.0)
    assert not claim_is_contested(spans, "A", 0, 4, claimed_at=5.0)


def test_disjoint_later_and_offline_claims_do_not_contest():
    spans = [peer_span("0", 4, 8, state=ServerState.JOINING, claimed_at=0.5),
             peer_span("A", 0, 4, state=ServerState.JOINING, claimed_at=2.0),
             peer_span("C", 0, 4, state=ServerState.OFFLINE, claimed_at=0.1)]
    assert not claim_is_contested(spans, "B", 0, 4, claimed_at=1.0)


def test_a_rival_that_already_went_online_still_wins_by_its_earlier_claim():
    spans = [peer_span("Z", 0, 4, state=ServerState.ONLINE, claimed_at=1.0)]
    assert claim_is_contested(spans, "B", 2, 6, claimed_at=1.5)


def test_servers_starting_together_end_on_different_spans():
    """Both see an empty swarm and claim 0..3; the loser re-chooses with the winner's claim in view."""
    first_choice = choose_best_start([], 8, 4)
    claims = [peer_span("A", first_choice, first_choice + 4, state=ServerState.JOINING),
              peer_span("B", first_choice, first_choice + 4, state=ServerState.JOINING)]
    assert claim_is_contested(claims, "B", first_choice, first_choice + 4, claimed_at=0.0)
    second_choice = choose_best_start([claims[0]], 8, 4)
    assert second_choice == 4


def test_spare_server_moves_to_orphaned_blocks():
    # B held 4..7 and left; the spare C duplicates A on 0..3
    spans = [peer_span("A", 0, 4), peer_span("C", 0, 4)]
    assert choose_move(spans, "C", 8) == 4


def test_a_balanced_swarm_does_not_move():
    spans = [peer_span("A", 0, 4), peer_span("B", 4, 8)]
    assert choose_move(spans, "A", 8) is None
    assert choose_move(spans, "B", 8) is None


def test_small_gains_do_not_cause_churn():
    # moving C from 0..3 to 4..7 would lift the weakest block from 10 to 11 only (< 1/0.75)
    spans = [peer_span("A", 0, 4, 10.0), peer_span("B", 4, 8, 10.0), peer_span("C", 0, 4, 1.0)]
    assert choose_move(spans, "C", 8) is None


def test_a_big_gain_moves_the_server():
    spans = [peer_span("A", 0, 4, 100.0), peer_span("B", 4, 8, 10.0), peer_span("C", 0, 4, 100.0)]
    assert choose_move(spans, "C", 8) == 4


def test_joining_claims_count_so_a_second_spare_stays():
    # C already claimed the orphaned blocks (JOINING); A must not move away too
    spans = [peer_span("A", 0, 4), peer_span("C", 4, 8, state=ServerState.JOINING)]
    assert choose_move(spans, "A", 8) is None


def test_unknown_server_does_not_move():
    assert choose_move([peer_span("A", 0, 4)], "Z", 8) is None
