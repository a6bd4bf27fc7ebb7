"""Adaptive batching of concurrent requests, owned by the service (no BentoML internals).

A call that finds the batcher idle is scored at once, alone: no request waits for company. Calls that arrive
while a batch is being scored queue up and become the next batch, oldest first, at most ``max_batch_size``
of them, so the batch size follows the load: one at low traffic, larger as requests arrive faster than a
batch is scored. Scoring runs in a worker thread, off the event loop. A call still queued
``max_latency_s`` after it arrived is refused (an overloaded server sheds load instead of queueing for ever).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import anyio.to_thread

J = TypeVar("J")
R = TypeVar("R")


@dataclass
class _Waiting(Generic[J, R]):
    job: J
    answer: asyncio.Future[R]
    since: float  # the event loop's clock when it arrived


@dataclass
class Batcher(Generic[J, R]):
    """``await batcher(job)`` → ``score([..., job, ...])``'s answer for ``job``.

    ``score`` takes a batch of jobs and returns one answer per job in their order; an answer that is an
    exception is raised to that job's caller only, and an exception ``score`` raises goes to every caller of
    the batch. ``overloaded()`` is the exception for a call that waited longer than ``max_latency_s``.
    ``observe(n)`` is told each batch's size (a metric).
    """

    score: Callable[[Sequence[J]], Sequence[R | Exception]]
    max_batch_size: int
    max_latency_s: float
    overloaded: Callable[[], Exception]
    observe: Callable[[int], None] = lambda n: None
    _queue: deque[_Waiting[J, R]] = field(default_factory=deque, init=False)
    _task: asyncio.Task[None] | None = field(default=None, init=False)  # the batch loop, while it runs

    async def __call__(self, job: J) -> R:
        loop = asyncio.get_running_loop()
        waiting = _Waiting(job, loop.create_future(), loop.time())
        self._queue.append(waiting)
        if self._task is None:
            self._task = loop.create_task(self._run())
        return await waiting.answer

    def _next_batch(self, now: float) -> list[_Waiting[J, R]]:
        """Up to ``max_batch_size`` queued calls, oldest first; those waited too long are refused, and those
        whose callers left (cancelled) are dropped."""
        batch: list[_Waiting[J, R]] = []
        while self._queue and len(batch) < self.max_batch_size:
            waiting = self._queue.popleft()
            if waiting.answer.done():
                continue
            if now - waiting.since > self.max_latency_s:
                waiting.answer.set_exception(self.overloaded())
                continue
            batch.append(waiting)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                batch = self._next_batch(loop.time())
                if batch:
                    await self._score(batch)
        finally:
            self._task = None

    async def _score(self, batch: list[_Waiting[J, R]]) -> None:
        self.observe(len(batch))
        try:
            answers = await anyio.to_thread.run_sync(self.score, [w.job for w in batch])
        except Exception as e:  # the whole batch failed: every caller of it gets the error
            answers = [e] * len(batch)
        if len(answers) != len(batch):
            error = RuntimeError(f"a batch of {len(batch)} jobs got {len(answers)} answers")
            answers = [error] * len(batch)
        for waiting, answer in zip(batch, answers, strict=True):
            if waiting.answer.done():  # the caller left
                continue
            if isinstance(answer, Exception):
                waiting.answer.set_exception(answer)
            else:
                waiting.answer.set_result(answer)
