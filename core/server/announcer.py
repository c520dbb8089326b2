"""Keeps a server's span announced in the DHT: re-declares before expiry, marks it offline at the end."""
from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Callable

import hivemind
from hivemind.utils import get_dht_time

from core.dht.records import declare_blocks
from core.dht.schema import ModelInfo, ServerInfo, ServerState

logger = logging.getLogger(__name__)


class Announcer(threading.Thread):
    """Background thread re-announcing ``make_info()`` every ``period`` seconds.

    The announced blocks are the info's ``start_block..end_block``, so a server that moves to
    other blocks simply announces the old span OFFLINE and the new one from then on. ``refresh``
    runs before each periodic announcement (e.g. to re-measure pings).
    """

    def __init__(
        self,
        dht: hivemind.DHT,
        dht_prefix: str,
        subkey: bytes,
        make_info: Callable[[], ServerInfo],
        model: ModelInfo,
        period: float,
        refresh: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(name="blossom-announcer", daemon=True)
        self.dht, self.dht_prefix, self.subkey = dht, dht_prefix, subkey
        self.make_info, self.model = make_info, model
        self.period = period
        self.refresh = refresh
        self._stop_event = threading.Event()

    @property
    def expiration(self) -> float:
        """Records outlive one missed update, so a briefly busy server does not vanish."""
        return 2 * self.period + 5

    def announce(self, state: ServerState | None = None, expiration: float | None = None) -> None:
        """Declare the span now (with ``state`` overriding the info's state)."""
        info = dataclasses.replace(self.make_info(), announced_at=get_dht_time())
        if state is not None:
            info = dataclasses.replace(info, state=state)
        indices = range(info.start_block, info.end_block)
        model = self.model if info.state != ServerState.OFFLINE else None
        try:
            declare_blocks(self.dht, self.dht_prefix, indices, info, expiration or self.expiration, self.subkey, model)
        except Exception:
            logger.warning("Could not announce blocks %d..%d in the DHT; will retry", info.start_block,
                           info.end_block - 1, exc_info=True)

    def run(self) -> None:
        while not self._stop_event.wait(self.period):
            if self.refresh is not None:
                try:
                    self.refresh()
                except Exception:
                    logger.debug("Refreshing before an announcement failed", exc_info=True)
            self.announce()

    def stop(self) -> None:
        """Stop re-announcing and mark the span offline.

        The DHT keeps, per server, the record that expires last, so the OFFLINE record must outlive the
        last ONLINE one (which expires ``expiration`` after its announcement) or it is silently rejected.
        """
        if self._stop_event.is_set():
            return
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=self.period + 5)
        self.announce(ServerState.OFFLINE)
