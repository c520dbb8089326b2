"""The KV-cache budget admits sessions that fit and refuses or delays the rest."""
import asyncio

import pytest

from core.errors import ServerFullError
from core.server.memory_cache import KVCacheBudget


def test_reserve_and_release():
    async def scenario():
        budget = KVCacheBudget(100)
        async with budget.reserve(60, timeout=0.1):
            assert budget.free_bytes == 40
            with pytest.raises(ServerFullError, match="server full"):
                async with budget.reserve(60, timeout=0.1):
                    pass
        assert budget.free_bytes == 100

    asyncio.run(scenario())


def test_waiting_session_starts_when_another_ends():
    async def scenario():
        budget = KVCacheBudget(100)
        order = []

        async def first():
            async with budget.reserve(80, timeout=1):
                await asyncio.sleep(0.1)
                order.append("first done")

        async def second():
            await asyncio.sleep(0.01)
            async with budget.reserve(80, timeout=2):
                order.append("second started")

        await asyncio.gather(first(), second())
        return order

    assert asyncio.run(scenario()) == ["first done", "second started"]


def test_session_larger_than_budget_fails_at_once():
    async def scenario():
        with pytest.raises(ServerFullError, match="larger than this server's whole budget"):
            async with KVCacheBudget(10).reserve(11, timeout=5):
                pass

    asyncio.run(scenario())


def test_a_session_cancelled_while_giving_back_its_bytes_still_frees_them():
    """A session cut while it ends (its stream cancelled as its cleanup waits for the budget's lock) must not keep
    its bytes, and a session waiting for room must still be woken."""
    async def scenario():
        budget = KVCacheBudget(100)
        leaving = asyncio.Event()

        async def session():
            async with budget.reserve(80, timeout=1):
                await leaving.wait()

        async def waiting():
            async with budget.reserve(80, timeout=2):
                return "started"

        holder = asyncio.create_task(session())
        await asyncio.sleep(0.01)
        waiter = asyncio.create_task(waiting())
        await asyncio.sleep(0.01)
        async with budget._changed:  # someone else holds the lock: the ending session's give-back must wait for it
            leaving.set()
            await asyncio.sleep(0.01)
            holder.cancel()  # cut while it waits
            await asyncio.gather(holder, return_exceptions=True)
        assert await asyncio.wait_for(waiter, 1) == "started"
        return budget.free_bytes

    assert asyncio.run(scenario()) == 100
