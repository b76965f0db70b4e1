"""asyncio helpers the standard library has only from Python 3.11 on (we support 3.10)."""
from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


@asynccontextmanager
async def _timeout_310(delay: float | None) -> AsyncIterator[None]:
    task = asyncio.current_task()
    if delay is None or task is None:
        yield
        return
    fired = False

    def expire() -> None:
        nonlocal fired
        fired = True
        task.cancel()

    handle = asyncio.get_running_loop().call_later(delay, expire)
    try:
        yield
    except asyncio.CancelledError:
        if fired:  # our own cancellation: the time is up
            raise TimeoutError() from None
        raise
    finally:
        handle.cancel()


# `async with timeout(seconds):` raises TimeoutError (the built-in) when the block has not finished
# in time, having cancelled what it awaited; None means no limit. asyncio.timeout from 3.11 on.
timeout = asyncio.timeout if sys.version_info >= (3, 11) else _timeout_310
