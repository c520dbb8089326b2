"""Block choice is a pure function over the swarm's spans."""
import pytest

from core.dht.schema import RemoteSpanInfo, ServerInfo, ServerState
from core.server.block_selection import block_throughputs, choose_best_start


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
