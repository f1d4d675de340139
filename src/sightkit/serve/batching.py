"""Dynamic batching: requests that arrive within a few milliseconds share one forward pass.

A model answers a batch of ``B`` images in much less than ``B`` times the time of one (the
matrix products get wider, the per-call overhead is paid once), so a server that runs each
request on its own wastes most of the accelerator under load. :class:`DynamicBatcher` keeps
the requests of all connections in one queue; a runner task on the event loop takes the
oldest request, waits until ``max_wait_ms`` after *its* arrival for more (or until
``max_batch`` are there), and hands the batch to one inference thread. Each request's
awaitable gets its own answer (or the batch's error). This is the scheme of TorchServe's
``batch_size`` / ``max_batch_delay`` and Triton's dynamic batcher, written here in ~100
lines because both are separate servers, not libraries an ASGI app can embed.

With a ``group`` function only items of one group share a batch (for a detector: images of
one shape, so that an answer never depends on the other requests of its batch). While a
batch runs in the thread, new requests queue up; the next batch then starts at
once if its oldest request has already waited ``max_wait_ms``, so under load the batches
fill up by themselves and the wait adds nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch

Item = TypeVar("Item")
Result = TypeVar("Result")


class QueueFullError(RuntimeError):
    """The batcher already holds ``max_queue`` requests (the server is overloaded)."""


class BatcherClosedError(RuntimeError):
    """The batcher was closed (the server is shutting down)."""


@dataclass(eq=False)
class _Pending(Generic[Item, Result]):
    item: Item
    future: asyncio.Future[Result]
    enqueued: float = field(default_factory=time.monotonic)


class DynamicBatcher(Generic[Item, Result]):
    """Gather concurrent requests into batches for ``infer``.

    Args:
        infer: ``infer(items) -> results``, one result per item in order; called in the
            inference thread under :func:`torch.inference_mode`. When a batch of several
            raises, each of its items is computed again alone, so that only the requests
            that fail alone get the exception (one bad image does not fail its batch-mates).
        max_batch: most items per call of ``infer`` (1 turns batching off).
        max_wait_ms: longest time an item waits for others to join its batch, counted from
            its arrival.
        max_queue: most items waiting; :meth:`submit` raises :class:`QueueFullError` beyond.
        executor: the thread pool ``infer`` runs in (default: a private one with one thread,
            so that the model is never called from two threads at once).
        on_batch: ``on_batch(size, seconds)`` after each call of ``infer``, for metrics.
        group: ``group(item) -> key``; only items with equal keys share a batch (e.g. images of
            one shape, so that no padding makes an answer depend on the other requests of its
            batch). The oldest item's group goes first; the others keep their places.

    Use it from one event loop: ``await start()``, then ``await submit(item)`` from any number
    of tasks, and ``await close()`` at the end.
    """

    def __init__(
        self,
        infer: Callable[[list[Item]], Sequence[Result]],
        max_batch: int = 8,
        max_wait_ms: float = 5.0,
        max_queue: int = 1024,
        executor: ThreadPoolExecutor | None = None,
        on_batch: Callable[[int, float], None] | None = None,
        group: Callable[[Item], Hashable] | None = None,
    ) -> None:
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be an integer >= 1, got {max_batch!r}")
        if not isinstance(max_wait_ms, int | float) or not 0 <= max_wait_ms < float("inf"):
            raise ValueError(f"max_wait_ms must be a finite number >= 0, got {max_wait_ms!r}")
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
            raise ValueError(f"max_queue must be an integer >= 1, got {max_queue!r}")
        self.infer = infer
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.group = group
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="sightkit-infer")
        self._pending: deque[_Pending[Item, Result]] = deque()
        self._arrived = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def queued(self) -> int:
        """Items waiting for a batch (not counting the batch being computed)."""
        return len(self._pending)

    async def start(self) -> None:
        """Start the runner task on the running event loop."""
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run(), name="sightkit-batcher")

    async def submit(self, item: Item, timeout: float | None = None) -> Result:
        """Queue ``item`` and wait for its result.

        Raises:
            QueueFullError: ``max_queue`` items are already waiting.
            BatcherClosedError: the batcher is closed or was never started.
            TimeoutError: no result within ``timeout`` seconds (the item is dropped if its
                batch has not started yet).
            Exception: whatever ``infer`` raised for the item's batch.
        """
        if self._closed or self._runner is None:
            raise BatcherClosedError("the batcher is not running (call start(); the server may be shutting down)")
        if len(self._pending) >= self.max_queue:
            raise QueueFullError(f"{len(self._pending)} requests are already waiting (max_queue={self.max_queue})")
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        pending = _Pending(item, future)
        self._pending.append(pending)
        self._arrived.set()
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            # Timed out or the client left: free its place in the queue at once.
            if future.cancelled() and pending in self._pending:
                self._pending.remove(pending)

    async def close(self, grace: float = 30.0) -> None:
        """Stop taking items, let the batch being computed finish (``grace`` seconds at most),
        and fail the items still waiting with :class:`BatcherClosedError`."""
        self._closed = True
        self._arrived.set()
        if self._runner is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._runner), grace)
            except TimeoutError:
                self._runner.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._runner
        while self._pending:
            pending = self._pending.popleft()
            if not pending.future.done():
                pending.future.set_exception(BatcherClosedError("the server is shutting down"))
        if self._own_executor:
            self._executor.shutdown(wait=False)

    async def _run(self) -> None:
        while not self._closed:
            batch = await self._next_batch()
            if not batch:
                continue
            start = time.perf_counter()
            try:
                results = await self._compute(batch)
            except Exception as error:
                if len(batch) > 1:
                    await self._one_by_one(batch)
                else:
                    self._fail(batch, error)
            else:
                for pending, result in zip(batch, results, strict=True):
                    if not pending.future.done():
                        pending.future.set_result(result)
            if self.on_batch is not None:
                self.on_batch(len(batch), time.perf_counter() - start)

    async def _compute(self, batch: list[_Pending[Item, Result]]) -> Sequence[Result]:
        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(self._executor, self._infer, [p.item for p in batch])
        if len(results) != len(batch):
            raise RuntimeError(f"infer returned {len(results)} results for a batch of {len(batch)}")
        return results

    async def _one_by_one(self, batch: list[_Pending[Item, Result]]) -> None:
        for pending in batch:
            try:
                (result,) = await self._compute([pending])
            except Exception as error:
                self._fail([pending], error)
            else:
                if not pending.future.done():
                    pending.future.set_result(result)

    @staticmethod
    def _fail(batch: list[_Pending[Item, Result]], error: Exception) -> None:
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(error)

    async def _next_batch(self) -> list[_Pending[Item, Result]]:
        # The deque holds the items and the event only signals arrivals, so a timed-out wait
        # can never lose an item (as a cancelled ``wait_for(queue.get())`` can on Python 3.11).
        while not self._pending:
            if self._closed:
                return []
            self._arrived.clear()
            await self._arrived.wait()
        oldest = self._pending[0]
        key = self.group(oldest.item) if self.group is not None else None
        deadline = oldest.enqueued + self.max_wait
        while self._count(key) < self.max_batch:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                break
        batch, rest = [], deque()
        while self._pending:
            pending = self._pending.popleft()
            if pending.future.done():  # drop requests that timed out or whose client left
                continue
            if len(batch) < self.max_batch and self._key(pending) == key:
                batch.append(pending)
            else:
                rest.append(pending)
        self._pending = rest
        return batch

    def _key(self, pending: _Pending[Item, Result]) -> Hashable:
        return self.group(pending.item) if self.group is not None else None

    def _count(self, key: Hashable) -> int:
        if self.group is None:
            return len(self._pending)
        return sum(1 for pending in self._pending if self._key(pending) == key)

    def _infer(self, items: list[Item]) -> Sequence[Result]:
        # inference_mode is thread-local: it must be entered in the thread that runs the model.
        with torch.inference_mode():
            return self.infer(items)
