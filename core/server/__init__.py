"""The block server: holds a span of transformer blocks on one device and serves them to the swarm.

Modules:

- ``server.py``: :class:`BlockServer`'s lifecycle: join the DHT, choose and load blocks, serve, announce, move, shut down.
- ``handler.py``: the ``rpc_*`` methods: parse and validate each request, answer errors, delegate compute to the backend.
- ``backend.py``: :class:`SpanBackend`, one span of blocks on one device: checks tensors against the blocks and runs them.
- ``bounded_streams.py``: streaming RPCs with a size limit per message, idle time-outs and clear answers to malformed frames.
- ``direct.py``: direct connections (TLS, or proven-local on one machine, on a port of its own), the same frames as a p2p stream without the p2p daemons.
- ``reachability.py``: can clients reach this server? Dial-back checks by other peers, else relay reservations.
- ``relay.py``: the dial-back and relay (reservation, circuit) services every public peer offers.
- ``memory_cache.py``: the KV-cache memory budget sessions reserve before they start.
- ``graph_cache.py``: autograd graphs kept from a forward pass for the backward that follows.
- ``block_selection.py``: which blocks to hold (pure functions over the swarm's announced spans).
- ``rebalancer.py``: moves the server to weaker blocks when that makes the swarm meaningfully stronger.
- ``announcer.py``: keeps the span announced in the DHT, re-declaring before expiry; offline at the end.
- ``throughput.py``: compute speed (measured, cached) and network speed, combined into the announced throughput.
- ``placement.py``: the device and precision blocks run in, and quantized linear layers.
- ``stats.py``: counters about the server's work, for the logs and the app.
"""
