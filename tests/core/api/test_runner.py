"""The event side of a generation run: waiting text pieces are sent together, nothing is lost or reordered,
and a silent swarm ends the wait with an error instead of hanging."""
from __future__ import annotations

import asyncio

from core.api.engine import GenerationResult
from core.api.runner import Run
from core.errors import RemoteCallError


def test_waiting_text_pieces_merge_and_the_end_is_kept() -> None:
    async def scenario() -> list:
        run = Run(token_timeout=5)
        result = GenerationResult("abc", 3, 3, "length")
        for event in (("text", "a"), ("text", "b"), ("done", result)):
            run.events.put_nowait(event)
        first = await run.next_merged()
        run.events.put_nowait(("text", "c"))  # arrives after the end was read ahead: not possible in a real run,
        second = await run.next_merged()      # but the held event still comes first
        third = await run.next_merged()
        return [first, second, third]

    first, second, third = asyncio.run(scenario())
    assert first == ("text", "ab") and second[0] == "done" and third == ("text", "c")


def test_no_token_within_the_timeout_is_an_error_and_cancels() -> None:
    async def scenario() -> tuple:
        run = Run(token_timeout=0.2)
        return await run.next(), run.cancelled.is_set()

    (kind, error), cancelled = asyncio.run(scenario())
    assert kind == "error" and isinstance(error, RemoteCallError) and "0.2 s" in str(error) and cancelled
