"""Announcements are signed: no peer can overwrite or forge another server's record (real DHTs on 127.0.0.1)."""
from __future__ import annotations

from functools import partial

import pytest
from hivemind.utils import get_dht_time

from core.dht.identity import owner_of_subkey, owner_subkey
from core.dht.node import create_dht
from core.dht.records import declare_blocks, get_block_servers, get_models
from core.dht.schema import ModelInfo, ServerInfo, ServerState, block_key

LOCAL = ("/ip4/127.0.0.1/tcp/0",)


def info(throughput: float) -> ServerInfo:
    return ServerInfo(ServerState.ONLINE, throughput, 0, 2, public_name="honest")


async def _raw_store(dht, node, key: str, subkey, value, expiration: float) -> bool:
    return await node.store(key, value, expiration, subkey=subkey)


@pytest.fixture(scope="module")
def swarm():
    """A bootstrap node, an honest server node and an attacker node, all signing their own records."""
    from core.dht.node import shutdown_client_dht

    bootstrap = create_dht(host_maddrs=LOCAL)
    peers = [str(addr) for addr in bootstrap.dht.get_visible_maddrs()]
    honest = create_dht(peers, host_maddrs=LOCAL, persistent_identity=True)
    attacker = create_dht(peers, host_maddrs=LOCAL, persistent_identity=True)
    reader = create_dht(peers, client_mode=True)
    yield honest, attacker, reader.dht
    shutdown_client_dht(reader.dht)
    for node in (attacker, honest, bootstrap):
        node.dht.shutdown()


def test_honest_announcement_is_read_back_with_its_peer_id(swarm):
    honest, _, reader = swarm
    subkey = owner_subkey(honest.dht.peer_id, honest.validator)
    declare_blocks(honest.dht, "signed-model", [0, 1], info(50.0), 60, subkey, ModelInfo("signed-model", 2, "llama"))
    servers = get_block_servers(reader, "signed-model", [0, 1])
    assert [set(block) for block in servers] == [{honest.dht.peer_id.to_base58()}] * 2
    assert get_models(reader)["signed-model"].num_blocks == 2


def test_attacker_cannot_overwrite_the_honest_record(swarm):
    honest, attacker, reader = swarm
    victim_subkey = owner_subkey(honest.dht.peer_id, honest.validator)
    forged = info(0.001).to_record() | {"public_name": "forged"}
    stored = attacker.dht.run_coroutine(partial(
        _raw_store, key=block_key("signed-model", 0), subkey=victim_subkey, value=forged,
        expiration=get_dht_time() + 120))
    assert not stored  # the honest subkey carries the honest key; the attacker cannot sign for it
    (block,) = get_block_servers(reader, "signed-model", [0])
    assert block[honest.dht.peer_id.to_base58()].public_name == "honest"


def test_attacker_cannot_claim_another_peer_id_with_its_own_key(swarm):
    honest, attacker, reader = swarm
    impostor_subkey = honest.dht.peer_id.to_base58().encode() + attacker.validator.local_public_key
    assert owner_of_subkey(impostor_subkey) is None
    attacker.dht.run_coroutine(partial(
        _raw_store, key=block_key("signed-model", 1), subkey=impostor_subkey,
        value=info(1e9).to_record() | {"public_name": "impostor"}, expiration=get_dht_time() + 120))
    (block,) = get_block_servers(reader, "signed-model", [1])
    assert {name.public_name for name in block.values()} == {"honest"}


def test_unsigned_and_malformed_records_are_ignored(swarm):
    _, attacker, reader = swarm
    own_subkey = owner_subkey(attacker.dht.peer_id, attacker.validator)
    for subkey, value in [("plain-peer-id", info(5.0).to_record()),  # unsigned
                          (own_subkey, {"state": "online", "throughput": "fast"}),  # malformed
                          (own_subkey, [1, 2, 3])]:
        attacker.dht.run_coroutine(partial(_raw_store, key=block_key("junk-model", 0), subkey=subkey, value=value,
                                           expiration=get_dht_time() + 60))
    assert get_block_servers(reader, "junk-model", [0]) == [{}]


@pytest.mark.parametrize("subkey", [b"", b"no-owner", b"Qm[owner:not a key]", "text", 42,
                                    b"\xff\xfe[owner:ssh-rsa AAAA]"])
def test_owner_of_garbage_subkeys_is_none(subkey):
    assert owner_of_subkey(subkey) is None
