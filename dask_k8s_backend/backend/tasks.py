"""Stopping background asyncio tasks: one way, shared by the snapshot sources and the backend's loops."""

from __future__ import annotations

import asyncio
import logging

logger = logging.getLogger(__name__)


async def cancel_and_wait(task: asyncio.Task | None) -> None:
    """Cancel ``task`` (if any) and wait until it has finished, so stop() leaves no task behind."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


async def stop_quietly(task: asyncio.Task | None) -> None:
    """Cancel and wait like :func:`cancel_and_wait`; a task that had already failed is logged, not raised.

    For loops whose stop() runs during shutdown: their failure was reported when it happened, and
    raising it again would leave the rest of the shutdown undone.
    """
    try:
        await cancel_and_wait(task)
    except Exception:
        logger.debug("a background task had failed before it was stopped", exc_info=True)
