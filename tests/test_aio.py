"""facescore_cli.aio: asyncio's 3.11 timeout, also on Python 3.10 (CI runs 3.11; the behaviour
below is what the 3.10 stand-in was checked against, with python3.10, on this machine)."""
from __future__ import annotations

import asyncio

import pytest

from facescore_cli import aio
from facescore_cli.aio import _timeout_310


@pytest.mark.parametrize("timeout", [aio.timeout, _timeout_310], ids=["aio.timeout", "3.10 stand-in"])
def test_timeout_cancels_the_block_and_raises_timeout_error(timeout) -> None:
    async def scene() -> list[str]:
        seen = []
        with pytest.raises(TimeoutError):
            async with timeout(0.05):
                try:
                    await asyncio.sleep(5)
                except asyncio.CancelledError:
                    seen.append("cancelled")
                    raise
        async with timeout(None):  # no limit
            await asyncio.sleep(0.01)
        async with timeout(5):  # finished in time: nothing left to fire later
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        seen.append("after")

        async def outer() -> None:
            async with timeout(5):
                await asyncio.sleep(5)

        task = asyncio.ensure_future(outer())
        await asyncio.sleep(0.02)
        task.cancel()  # a cancellation from outside stays one
        with pytest.raises(asyncio.CancelledError):
            await task
        return seen

    assert asyncio.run(scene()) == ["cancelled", "after"]
