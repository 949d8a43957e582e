"""Micro-batching: the requests that arrive within a few milliseconds share one model call.

A model call costs about the same for one image as for a few, so under load the
service answers more requests per second when it predicts them together. Each
request puts its inputs on a queue and waits; one worker task takes the first
waiting request, gathers those that arrive within ``window_s`` after it (up to
``max_batch`` inputs), and runs ``predict`` once on all their inputs, in a thread of
its own so the event loop keeps answering (``/health`` during a prediction). Every
request of the batch gets the whole result back and picks its own rows.

Model calls never overlap (one thread), so the model needs no lock. A request is
never split: one that alone holds more than ``max_batch`` inputs is a batch of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

Input = TypeVar("Input")
Result = TypeVar("Result")


@dataclass(frozen=True)
class _Job(Generic[Input, Result]):
    inputs: Sequence[Input]
    answer: asyncio.Future[Result]


class MicroBatcher(Generic[Input, Result]):
    """Runs ``predict`` on the inputs of the requests that arrive together.

    :meth:`start` and :meth:`stop` belong to the event loop that serves the
    requests (the app's lifespan); :meth:`submit` is what a request awaits.
    """

    def __init__(
        self,
        predict: Callable[[list[Input]], Result],
        *,
        window_s: float,
        max_batch: int,
    ) -> None:
        if window_s < 0 or max_batch < 1:
            raise ValueError(
                f"window_s must be >= 0 and max_batch >= 1, got {window_s}, {max_batch}"
            )
        self._predict = predict
        self.window_s = window_s
        self.max_batch = max_batch
        self._queue: asyncio.Queue[_Job[Input, Result]] | None = None
        self._held: _Job[Input, Result] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._thread: ThreadPoolExecutor | None = None

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    def start(self) -> None:
        """Start the worker in the running event loop."""
        self._queue = asyncio.Queue()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mritumor-model")
        self._worker = asyncio.get_running_loop().create_task(self._work())

    async def stop(self) -> None:
        """Stop the worker; requests still waiting get a RuntimeError."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        waiting = [self._held] if self._held is not None else []
        while self._queue is not None and not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        for job in waiting:
            if not job.answer.done():
                job.answer.set_exception(RuntimeError("the service is shutting down"))
        if self._thread is not None:
            self._thread.shutdown(wait=False)
        self._worker, self._queue, self._held, self._thread = None, None, None, None

    async def submit(self, inputs: Sequence[Input]) -> Result:
        """The result of the batch that predicted ``inputs`` (with other requests' inputs)."""
        if self._queue is None or not self.running:
            raise RuntimeError("the micro-batcher is not running (start it in the app's lifespan)")
        answer: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(inputs, answer))
        return await answer

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            if not batch:
                continue
            inputs = [item for job in batch for item in job.inputs]
            try:
                result = await loop.run_in_executor(self._thread, self._predict, inputs)
            except Exception as error:  # every request of the batch learns why
                for job in batch:
                    if not job.answer.done():
                        job.answer.set_exception(error)
                continue
            for job in batch:
                if not job.answer.done():  # a request that gave up has a cancelled future
                    job.answer.set_result(result)

    async def _gather(self) -> list[_Job[Input, Result]]:
        """The first waiting job and those that arrive within the window, up to max_batch inputs."""
        assert self._queue is not None
        first = self._held if self._held is not None else await self._queue.get()
        self._held = None
        batch, size = [first], len(first.inputs)
        deadline = asyncio.get_running_loop().time() + self.window_s
        while size < self.max_batch:
            left = deadline - asyncio.get_running_loop().time()
            try:
                if left <= 0:
                    job = self._queue.get_nowait()
                else:
                    job = await asyncio.wait_for(self._queue.get(), left)
            except (asyncio.QueueEmpty, asyncio.TimeoutError):
                break
            if size + len(job.inputs) > self.max_batch:
                self._held = job  # the first of the next batch
                break
            batch.append(job)
            size += len(job.inputs)
        return [job for job in batch if not job.answer.done()]
