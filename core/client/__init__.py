"""The distributed client: runs a model whose blocks live on servers of the swarm.

Modules:

- ``remote_sequential.py``: :class:`RemoteSequential`, a range of remote blocks used like a local ``nn.Module``, autograd included.
- ``inference_session.py``: step-by-step inference through a chain of servers keeping KV caches; replays history on failover.
- ``generation.py``: ``generate`` is transformers' own (every option), adapted to the swarm; sessions that continue across calls.
- ``remote_cache.py``: :class:`RemoteCache`, the servers' KV caches behind transformers' cache (one session per row when padded).
- ``ptune.py``: trainable prompts kept on the client (``ptune`` prefix embeddings, ``deep_ptune`` per-block prompts).
- ``sequence_manager.py``: the client's view of which servers hold which blocks, bans, and the forward/backward calls.
- ``routing.py``: chains of servers for a range of blocks, by latency or by throughput (pure functions).
- ``transports.py``: the ways to open a stream to a server's RPC: a direct connection (TLS, or proven-local on one machine), a relay circuit, or p2p.
- ``blocking_stream.py``: an open stream's socket taken from asyncio, so a step is one send and a few receives.
"""
