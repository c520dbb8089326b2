"""Moving a server to weaker blocks when that makes the swarm meaningfully stronger.

Every so often (a random period averaging ``mean_period``, so servers don't all decide at once)
the rebalancer reads the swarm and asks :func:`core.server.block_selection.choose_move` whether
this server should hold other blocks; if so, ``move_to`` (the server's :meth:`BlockServer.move_to`)
hands its sessions off and re-announces. Blocks orphaned by servers that left are re-covered this way when spares exist.
"""
from __future__ import annotations

import logging
import random
import threading
from typing import Callable

from core.dht.schema import RemoteSpanInfo
from core.server.block_selection import choose_move

logger = logging.getLogger(__name__)


class Rebalancer(threading.Thread):
    """Background thread checking the balance of the swarm for server ``peer_id``: ``read_spans()`` gives
    the swarm's spans now, ``move_to(start)`` moves the server's span to begin at ``start``."""

    def __init__(self, peer_id: str, total_blocks: int, read_spans: Callable[[], list[RemoteSpanInfo]],
                 move_to: Callable[[int], None], mean_period: float, balance_quality: float) -> None:
        super().__init__(name="blossom-rebalancer", daemon=True)
        self.peer_id, self.total_blocks, self.read_spans, self.move_to = peer_id, total_blocks, read_spans, move_to
        self.mean_period, self.balance_quality = mean_period, balance_quality
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(random.uniform(0.5, 1.5) * self.mean_period):
            try:
                self.check()
            except Exception:
                logger.warning("Checking the swarm's balance failed; will try again", exc_info=True)

    def check(self) -> bool:
        """Move now if the swarm would be meaningfully stronger; returns whether the server moved."""
        new_start = choose_move(self.read_spans(), self.peer_id, self.total_blocks, self.balance_quality)
        if new_start is None or self._stop_event.is_set():
            return False
        self.move_to(new_start)
        return True

    def stop(self) -> None:
        self._stop_event.set()
