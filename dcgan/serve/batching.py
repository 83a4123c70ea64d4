"""Server-side batching: requests that arrive within `max_wait_s` of each other are run as one call.

Each request submits its rows (a tensor or array of k items); a single worker task gathers queued
submissions until `max_batch` rows or `max_wait_s` after the first, concatenates them, runs `fn` once in
the model thread, and hands each request its slice of the result. The event loop never blocks on the
model, so requests keep arriving (and being parsed) while a batch runs.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import Executor

import numpy as np
import torch


def _concat(parts):
    return torch.cat(parts) if isinstance(parts[0], torch.Tensor) else np.concatenate(parts)


def _split(out, sizes: list[int]):
    """fn's output (an array/tensor, or a tuple of them) cut into one piece per submission."""
    bounds = np.cumsum([0] + sizes)
    if isinstance(out, tuple):
        return [tuple(o[a:b] for o in out) for a, b in zip(bounds, bounds[1:])]
    return [out[a:b] for a, b in zip(bounds, bounds[1:])]


class Batcher:
    def __init__(self, fn, executor: Executor, max_batch: int = 64, max_wait_s: float = 0.005):
        self.fn, self.executor = fn, executor
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self.queue: asyncio.Queue | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.worker: asyncio.Task | None = None
        self.calls = self.rows = 0          # statistics: model calls made and rows they carried

    async def submit(self, rows):
        loop = asyncio.get_running_loop()
        if self.worker is None or self.worker.done() or self.loop is not loop:
            # first call, or a new event loop (test clients may run each request in their own)
            self.loop, self.queue = loop, asyncio.Queue()
            self.worker = loop.create_task(self._work())
        fut = loop.create_future()
        await self.queue.put((rows, fut))
        return await fut

    async def _work(self):
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            n, deadline = len(items[0][0]), loop.time() + self.max_wait_s
            while n < self.max_batch:
                try:
                    item = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self.queue.get(), left)
                    except asyncio.TimeoutError:
                        break
                items.append(item)
                n += len(item[0])
            items = [(rows, fut) for rows, fut in items if not fut.cancelled()]  # timed-out requests: skip
            if not items:
                continue
            try:
                out = await loop.run_in_executor(self.executor, self.fn, _concat([r for r, _ in items]))
                pieces = _split(out, [len(r) for r, _ in items])
            except Exception as e:  # noqa: BLE001 - every waiting request gets the error, the worker lives on
                for _, fut in items:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            self.calls += 1
            self.rows += n
            for (_, fut), piece in zip(items, pieces):
                if not fut.done():
                    fut.set_result(piece)
