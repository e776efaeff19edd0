"""Background tasks that are kept referenced until they finish (asyncio only keeps weak references), and
work handed to a thread pool."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from typing import Any

logger = logging.getLogger(__name__)

_running: set[asyncio.Task[Any]] = set()


async def run_in[T](executor: Executor, fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) in one of our thread pools, awaited from the event loop."""
    return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)


def spawn(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    task = asyncio.get_running_loop().create_task(coro)
    _running.add(task)
    task.add_done_callback(_done)
    return task


def _done(task: asyncio.Task[Any]) -> None:
    _running.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.warning("background task failed: %r", task.exception())
