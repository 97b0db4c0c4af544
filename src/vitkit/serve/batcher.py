"""Micro-batching: concurrent requests for one model share a model call.

Images that queued while the model was busy form the next batch; under concurrent traffic
the first image also waits at most ``max_wait_ms`` for others, up to ``max_batch``, while a
lone client's image runs at once. The batch runs in the model's own worker thread, so the
event loop never blocks. The queue is bounded: when it is full, :meth:`MicroBatcher.submit`
raises :class:`Overloaded` at once (the service answers 503 with ``Retry-After``) instead of
letting latency grow without limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


class Overloaded(Exception):
    """The model's queue is full."""


class MicroBatcher(Generic[ItemT, ResultT]):
    def __init__(self, run: Callable[[list[ItemT]], list[ResultT]], max_batch: int = 32,
                 max_wait_ms: float = 5.0, max_queue: int = 256, name: str = "model",
                 on_batch: Callable[[int], None] | None = None) -> None:
        self.run = run
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self.on_batch = on_batch
        self._queue: asyncio.Queue[tuple[ItemT, asyncio.Future[ResultT]]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"vitkit-{name}")

    @property
    def depth(self) -> int:
        """Images waiting (not counting the batch being computed)."""
        return 0 if self._queue is None else self._queue.qsize()

    def start(self) -> None:
        self._queue = asyncio.Queue(self.max_queue)
        self._worker = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._executor.shutdown(wait=True)

    async def submit(self, item: ItemT) -> ResultT:
        """The model's answer for one item, computed in a batch with others.

        Raises:
            Overloaded: The queue is full.
            Exception: Whatever the model call raised for the batch.
        """
        if self._queue is None:
            raise RuntimeError("the batcher is not started")
        future: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((item, future))
        except asyncio.QueueFull:
            raise Overloaded from None
        return await future

    async def _loop(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        last_size = 1
        while True:
            pending = [await self._queue.get()]
            # Wait for company only when there is traffic to wait for (the last batch had
            # more than one image): a lone client never pays max_wait_ms.
            deadline = time.monotonic() + (self.max_wait if last_size > 1 else 0.0)
            while len(pending) < self.max_batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    # Take what already waits without waiting longer.
                    while len(pending) < self.max_batch and not self._queue.empty():
                        pending.append(self._queue.get_nowait())
                    break
                try:
                    pending.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            live = [(item, future) for item, future in pending if not future.done()]
            last_size = max(1, len(pending))
            if not live:
                continue
            if self.on_batch is not None:
                self.on_batch(len(live))
            try:
                results = await loop.run_in_executor(self._executor, self.run,
                                                     [item for item, _ in live])
            except Exception as exc:  # noqa: BLE001 - the callers decide (fallback)
                for _, future in live:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(live, results, strict=True):
                if not future.done():
                    future.set_result(result)
