"""DHT records: valid ones parse, malformed ones are skipped, spans are computed per server."""
import pytest

from core.dht.records import compute_spans
from core.dht.schema import ServerInfo, ServerState, block_uid_index


def test_record_round_trip():
    info = ServerInfo(ServerState.ONLINE, 12.5, 2, 6, public_name="gamer", torch_dtype="float32")
    assert ServerInfo.from_record(info.to_record()) == info


@pytest.mark.parametrize(
    "record",
    [None, 5, "x", {}, {"state": "weird", "throughput": 1, "start_block": 0, "end_block": 1},
     {"state": "online", "throughput": float("nan"), "start_block": 0, "end_block": 1},
     {"state": "online", "throughput": 1, "start_block": 3, "end_block": 1}],
)
def test_malformed_records_are_ignored(record):
    assert ServerInfo.from_record(record) is None


def test_spans_keep_online_servers_and_contiguous_blocks():
    online = ServerInfo(ServerState.ONLINE, 1.0, 0, 3)
    offline = ServerInfo(ServerState.OFFLINE, 1.0, 0, 3)
    blocks = [{"a": online, "b": offline}, {"a": online}, {}, {"a": online}]
    spans = compute_spans(blocks)
    assert [(s.peer_id, s.start, s.end) for s in spans] == [("a", 0, 2)]


def test_block_uid_parsing():
    assert block_uid_index("my-model.12") == ("my-model", 12)
    for bad in ["nodot", "x.", ".3", "x.-1", "x.1a"]:
        with pytest.raises(ValueError):
            block_uid_index(bad)
