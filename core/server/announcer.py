"""Keeps a server's span announced in the DHT: re-declares before expiry, marks it offline at the end."""
from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Callable

import hivemind

from core.dht.records import declare_blocks
from core.dht.schema import ServerInfo, ServerState

logger = logging.getLogger(__name__)


class Announcer(threading.Thread):
    """Background thread re-announcing ``make_info()`` for blocks ``[start, end)`` every ``period`` seconds."""

    def __init__(
        self,
        dht: hivemind.DHT,
        dht_prefix: str,
        start: int,
        end: int,
        make_info: Callable[[], ServerInfo],
        period: float,
    ) -> None:
        super().__init__(name="blossom-announcer", daemon=True)
        self.dht, self.dht_prefix = dht, dht_prefix
        self.indices = list(range(start, end))
        self.make_info = make_info
        self.period = period
        self._stop_event = threading.Event()

    @property
    def expiration(self) -> float:
        """Records outlive one missed update, so a briefly busy server does not vanish."""
        return 2 * self.period + 5

    def announce(self, state: ServerState | None = None, expiration: float | None = None) -> None:
        """Declare the span now (with ``state`` overriding the info's state)."""
        info = self.make_info()
        if state is not None:
            info = dataclasses.replace(info, state=state)
        try:
            declare_blocks(self.dht, self.dht_prefix, self.indices, info, expiration or self.expiration)
        except Exception:
            logger.warning("Could not announce blocks %s in the DHT; will retry", self.indices, exc_info=True)

    def run(self) -> None:
        while not self._stop_event.wait(self.period):
            self.announce()

    def stop(self) -> None:
        """Stop re-announcing and mark the span offline.

        The DHT keeps, per server, the record that expires last, so the OFFLINE record must outlive the
        last ONLINE one (which expires ``expiration`` after its announcement) or it is silently rejected.
        """
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=self.period + 5)
        self.announce(ServerState.OFFLINE)
