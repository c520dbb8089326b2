"""A DHT's P2P replica is made once, even when several callers first ask at the same time (real DHTs on 127.0.0.1)."""
from __future__ import annotations

import asyncio

from core.dht.node import create_dht, p2p_replica, shutdown_client_dht
from core.utils.event_loop import shared_loop

LOCAL = ("/ip4/127.0.0.1/tcp/0",)


async def _daemon_connection_tasks() -> int:
    """Pending tasks on this loop that keep a P2P replica's connection to its daemon open."""
    return sum(1 for task in asyncio.all_tasks()
               if "persistent_conn" in getattr(task.get_coro(), "__qualname__", "") and not task.done())


def test_concurrent_first_calls_share_one_replica_and_shutdown_closes_it():
    loop = shared_loop()
    bootstrap = create_dht(host_maddrs=LOCAL)
    client = None
    try:
        before = loop.run(_daemon_connection_tasks(), timeout=10)
        client = create_dht([str(address) for address in bootstrap.dht.get_visible_maddrs()], client_mode=True).dht

        async def ask_together() -> list:
            return await asyncio.gather(*(p2p_replica(client) for _ in range(6)))

        replicas = loop.run(ask_together(), timeout=60)
        assert all(replica is replicas[0] for replica in replicas), "concurrent callers got different replicas"
        assert loop.run(_daemon_connection_tasks(), timeout=10) == before + 2  # one replica: a reader and a writer

        shutdown_client_dht(client)
        client = None
        assert loop.run(_daemon_connection_tasks(), timeout=10) == before, "a replica was left open"
    finally:
        if client is not None:
            shutdown_client_dht(client)
        bootstrap.dht.shutdown()
