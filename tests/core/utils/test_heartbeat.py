"""A long silent step says what it does when it starts and every few seconds until it ends."""
from __future__ import annotations

import logging
import threading
import time

import pytest

from core.utils.heartbeat import still_working


def test_a_silent_step_is_announced_and_reminded_until_it_ends(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("blossom.test.heartbeat")
    with caplog.at_level(logging.INFO, logger=logger.name):
        with still_working("Reading the tokenizer", logger, period=0.05):
            time.sleep(0.3)
        ended = len(caplog.records)
        time.sleep(0.2)
    messages = [record.getMessage() for record in caplog.records]
    assert messages[0] == "Reading the tokenizer ..."
    assert len(messages) >= 3 and all(m.startswith("Reading the tokenizer: still at it (") for m in messages[1:])
    assert len(caplog.records) == ended, "the reminders stop when the step ends"
    assert not any(thread.name == "blossom-heartbeat" for thread in threading.enumerate())


def test_an_error_in_the_step_propagates_and_stops_the_reminders() -> None:
    with pytest.raises(ValueError, match="bad file"):
        with still_working("Reading", logging.getLogger("blossom.test.heartbeat"), period=0.05):
            raise ValueError("bad file")
    assert not any(thread.name == "blossom-heartbeat" for thread in threading.enumerate())
