"""The client's ways to open a stream to a server; they live in :mod:`core.transports`, shared with servers
that push to the next server (kept here so that ``core.client.transports`` imports keep working)."""
from core.transports import (  # noqa: F401 (re-exported)
    DIRECT_CONNECT_TIMEOUT,
    RELAY_OPEN_TIMEOUT,
    Stream,
    open_direct_stream,
    open_p2p_stream,
    open_relay_circuit,
)
