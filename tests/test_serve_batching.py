"""The batcher: requests queued while the model is busy form the next batch at once; model threads run
calls side by side and are shared by the batchers; a failing call fails its requests only."""
import asyncio
import threading
import time

import numpy as np
import pytest
import torch

from dcgan.serve.batching import Batcher, ModelThreads


class Recorder:
    """fn for a Batcher: returns its rows doubled, records batch sizes and the most calls at once."""

    def __init__(self, seconds=0.0, barrier=None):
        self.seconds, self.barrier = seconds, barrier
        self.sizes, self.running, self.most = [], 0, 0
        self.lock = threading.Lock()

    def __call__(self, rows):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.sizes.append(len(rows))
        try:
            if self.barrier is not None:
                self.barrier.wait()            # returns only when another call is running too
            time.sleep(self.seconds)
            return rows * 2
        finally:
            with self.lock:
                self.running -= 1


def test_requests_queued_while_the_model_is_busy_join_the_next_batch_without_waiting():
    fn = Recorder(seconds=0.5)
    batcher = Batcher(fn, ModelThreads(1), max_batch=64, max_wait_s=0.2)

    async def go():
        first = asyncio.ensure_future(batcher.submit(np.ones((1, 3))))
        await asyncio.sleep(0.25)              # the first call runs from ~0.2 s to ~0.7 s
        t0 = time.monotonic()
        rest = await asyncio.gather(*(batcher.submit(np.full((2, 3), i)) for i in range(5)))
        return await first, rest, time.monotonic() - t0
    first, rest, waited = asyncio.run(go())
    assert fn.sizes == [1, 10]                 # the five queued requests: one call
    # they waited for the busy model (~0.45 s) and their own call (0.5 s), not for the 0.2 s timer on top
    assert waited < 0.95 + 0.15, waited
    assert np.array_equal(first, np.full((1, 3), 2.0))
    assert all(np.array_equal(r, np.full((2, 3), 2 * i)) for i, r in enumerate(rest))


def test_a_lone_request_waits_max_wait_for_company_when_the_model_is_free():
    fn = Recorder()
    batcher = Batcher(fn, ModelThreads(1), max_batch=64, max_wait_s=0.3)

    async def go():
        first = asyncio.ensure_future(batcher.submit(torch.ones(1, 2)))
        await asyncio.sleep(0.1)
        second = await batcher.submit(torch.zeros(3, 2))
        return await first, second
    first, second = asyncio.run(go())
    assert fn.sizes == [4] and first.shape == (1, 2) and second.shape == (3, 2)


def test_model_threads_run_calls_side_by_side_and_are_shared_by_batchers():
    # two threads: two calls meet at the barrier (with one thread it would time out)
    fn = Recorder(barrier=threading.Barrier(2, timeout=10))
    threads = ModelThreads(2)
    batcher = Batcher(fn, threads, max_batch=1, max_wait_s=0)

    async def two():
        return await asyncio.gather(batcher.submit(np.ones((1, 1))), batcher.submit(np.ones((1, 1))))
    assert len(asyncio.run(two())) == 2 and fn.most == 2

    # one thread shared by two batchers: never two calls at once
    g, e = Recorder(seconds=0.02), Recorder(seconds=0.02)
    one = ModelThreads(1)
    bg, be = Batcher(g, one, max_batch=2, max_wait_s=0), Batcher(e, one, max_batch=2, max_wait_s=0)
    in_flight = Recorder()                     # counts calls of either batcher
    bg.fn = lambda rows: (in_flight(rows), g(rows))[1]
    be.fn = lambda rows: (in_flight(rows), e(rows))[1]

    async def mixed():
        return await asyncio.gather(*(b.submit(np.ones((1, 1))) for _ in range(6) for b in (bg, be)))
    assert len(asyncio.run(mixed())) == 12
    assert in_flight.most == 1 and bg.calls + be.calls >= 6


def test_model_threads_use_their_own_torch_thread_count():
    before = torch.get_num_threads()
    threads = ModelThreads(1, torch_threads=before + 1)
    assert threads.executor.submit(torch.get_num_threads).result() == before + 1
    assert torch.get_num_threads() == before           # the calling thread's count is untouched


def test_a_failing_call_fails_its_requests_and_the_next_batch_runs():
    calls = []

    def fn(rows):
        calls.append(len(rows))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return rows

    batcher = Batcher(fn, ModelThreads(1), max_batch=8, max_wait_s=0.01)

    async def go():
        with pytest.raises(RuntimeError, match="boom"):
            await batcher.submit(np.ones((1, 1)))
        return await batcher.submit(np.ones((2, 1)))
    assert asyncio.run(go()).shape == (2, 1) and calls == [1, 2]


def test_no_model_call_exceeds_max_batch_rows():
    """A request larger than max_batch is run in pieces; a queued request that would overflow the batch
    waits for the next one; each request still gets its own rows back, in order."""
    fn = Recorder()
    batcher = Batcher(fn, ModelThreads(1), max_batch=8, max_wait_s=0.05)

    async def go():
        big = np.arange(20.0).reshape(20, 1)
        return await asyncio.gather(batcher.submit(big), batcher.submit(np.full((5, 1), -1.0)),
                                    batcher.submit(np.full((5, 1), -2.0)))
    big, a, b = asyncio.run(go())
    assert max(fn.sizes) <= 8 and sum(fn.sizes) == 30, fn.sizes
    assert np.array_equal(big, 2 * np.arange(20.0).reshape(20, 1))
    assert np.array_equal(a, np.full((5, 1), -2.0)) and np.array_equal(b, np.full((5, 1), -4.0))


def test_tuple_outputs_of_a_request_in_pieces_are_joined():
    batcher = Batcher(lambda rows: (rows, rows[:, 0] * 10), ModelThreads(1), max_batch=3, max_wait_s=0)
    z, err = asyncio.run(batcher.submit(torch.arange(7.0).reshape(7, 1)))
    assert z.shape == (7, 1) and torch.equal(err, torch.arange(7.0) * 10)
