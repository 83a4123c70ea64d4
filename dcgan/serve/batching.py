"""Server-side batching: requests that arrive close together are run as one model call.

Each request submits its rows (a tensor or array of k items) to a Batcher (one per model); more than
`max_batch` rows are queued as several pieces, so that no model call ever exceeds `max_batch` rows (a
request of 256 instances does not hold a model thread for one oversized call). A worker task forms a batch
when a model thread is free: what is queued by then, up to `max_batch` rows (a piece that would not fit
starts the next batch); if that is less than `max_batch`, it waits for more until the batch's first
request has waited `max_wait_s`. While
the model threads are busy, requests queue up and join the next batch without any extra wait, so a
loaded server never idles its model threads for the timer. `fn` runs in the model threads (ModelThreads,
shared by the batchers); each request gets its slice of the result. The event loop never blocks on the
model, so requests keep arriving (and being parsed) while batches run.
"""
from __future__ import annotations

import asyncio
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np


class ModelThreads:
    """`n` threads that run model calls, each with `torch_threads` intra-op threads (thread-local: the
    process's other threads keep theirs). On few cores, n single-threaded calls side by side beat one
    call spread over all cores: no core waits at the end of each op for the slowest one. torch_threads is
    ignored when torch was never imported (an ONNX-only server: onnxruntime sets threads per session)."""

    def __init__(self, n: int = 1, torch_threads: int | None = None):
        self.n = n
        torch = sys.modules.get("torch")
        init = (lambda: torch.set_num_threads(torch_threads)) if torch_threads and torch else None
        self.executor = ThreadPoolExecutor(n, thread_name_prefix="model", initializer=init)
        self._free: dict = {}

    def free(self) -> asyncio.Semaphore:
        """The semaphore counting free threads, for the running event loop (tests may run several loops)."""
        loop = asyncio.get_running_loop()
        if loop not in self._free:
            self._free = {loop: asyncio.Semaphore(self.n)}
        return self._free[loop]


def _concat(parts):
    torch = sys.modules.get("torch")   # tensors only where torch is loaded: the serving image has none
    return torch.cat(parts) if torch and isinstance(parts[0], torch.Tensor) else np.concatenate(parts)


def _join(outs: list):
    """The pieces' outputs (arrays/tensors, or tuples of them) as one."""
    if len(outs) == 1:
        return outs[0]
    if isinstance(outs[0], tuple):
        return tuple(_concat(list(parts)) for parts in zip(*outs))
    return _concat(outs)


def _split(out, sizes: list[int]):
    """fn's output (an array/tensor, or a tuple of them) cut into one piece per submission."""
    bounds = np.cumsum([0] + sizes)
    if isinstance(out, tuple):
        return [tuple(o[a:b] for o in out) for a, b in zip(bounds, bounds[1:])]
    return [out[a:b] for a, b in zip(bounds, bounds[1:])]


class Batcher:
    def __init__(self, fn, threads: ModelThreads, max_batch: int = 64, max_wait_s: float = 0.005):
        self.fn, self.threads = fn, threads
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self.queue: asyncio.Queue | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.worker: asyncio.Task | None = None
        self.calls = self.rows = 0          # statistics: model calls made and rows they carried
        self.queued = 0                     # rows waiting for a model call (the metrics' queue depth)
        self.on_call = None                 # called with (rows, seconds) after each model call (metrics)
        self._running: set[asyncio.Task] = set()

    async def submit(self, rows):
        loop = asyncio.get_running_loop()
        if self.worker is None or self.worker.done() or self.loop is not loop:
            # first call, or a new event loop (test clients may run each request in their own)
            self.loop, self.queue, self.queued = loop, asyncio.Queue(), 0
            self.worker = loop.create_task(self._work())
        futs = []
        for a in range(0, len(rows), self.max_batch):
            futs.append(loop.create_future())
            self.queue.put_nowait((rows[a:a + self.max_batch], futs[-1], time.monotonic()))
            self.queued += len(rows[a:a + self.max_batch])
        try:
            return _join(await asyncio.gather(*futs))
        except BaseException:     # a time limit, or a failed piece: the other pieces are not run or awaited
            for fut in futs:
                fut.cancel()
            raise

    async def _work(self):
        free = self.threads.free()
        held = None                                  # a piece that did not fit the last batch: it starts this one
        while True:
            items = [held or await self.queue.get()]
            held = None
            await free.acquire()                     # meanwhile more requests queue up
            try:
                n = len(items[0][0])
                deadline = items[0][2] + self.max_wait_s
                while n < self.max_batch:
                    try:
                        item = self.queue.get_nowait()
                    except asyncio.QueueEmpty:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        try:
                            item = await asyncio.wait_for(self.queue.get(), left)
                        except asyncio.TimeoutError:
                            break
                    if n + len(item[0]) > self.max_batch:
                        held = item
                        break
                    items.append(item)
                    n += len(item[0])
            except BaseException:
                free.release()
                raise
            self.queued -= n                         # `held` still waits: counted when it runs
            items = [(rows, fut) for rows, fut, _ in items if not fut.cancelled()]  # timed-out requests: skip
            if not items:
                free.release()
                continue
            task = asyncio.get_running_loop().create_task(self._run(items, n, free))
            self._running.add(task)                  # keep a reference until it is done
            task.add_done_callback(self._running.discard)

    async def _run(self, items, n: int, free: asyncio.Semaphore):
        loop = asyncio.get_running_loop()
        try:
            batch, t0 = _concat([r for r, _ in items]), time.perf_counter()
            out = await loop.run_in_executor(self.threads.executor, self.fn, batch)
            if self.on_call is not None:
                self.on_call(len(batch), time.perf_counter() - t0)
            pieces = _split(out, [len(r) for r, _ in items])
        except Exception as e:  # noqa: BLE001 - every waiting request gets the error, the worker lives on
            for _, fut in items:
                if not fut.done():
                    fut.set_exception(e)
            return
        finally:
            free.release()
        self.calls += 1
        self.rows += n
        for (_, fut), piece in zip(items, pieces):
            if not fut.done():
                fut.set_result(piece)
