"""serving.dispatcher.Batcher: concurrent calls scored together, each caller getting its own answer or error."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from serving.dispatcher import Batcher


class Overloaded(Exception):
    pass


class Scorer:
    """Doubles each job; a job < 0 is that job's error; the first batch waits until ``release`` is set."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = threading.Event()

    def __call__(self, jobs: Sequence[int]) -> list[int | Exception]:
        self.batches.append(list(jobs))
        if len(self.batches) == 1:
            self.release.wait(10)
        return [ValueError(f"bad job {j}") if j < 0 else 2 * j for j in jobs]


def batcher(scorer: Scorer, max_batch_size: int = 64, max_latency_s: float = 10.0) -> Batcher[int, int]:
    return Batcher(scorer, max_batch_size, max_latency_s, overloaded=lambda: Overloaded("retry later"))


async def call_all(b: Batcher[int, int], scorer: Scorer, jobs: list[int]) -> list[int | BaseException]:
    """The first job alone (it starts a batch), then the others while that batch is being scored."""
    first = asyncio.ensure_future(b(jobs[0]))
    await asyncio.sleep(0.05)  # the first batch is now in its thread
    rest = [asyncio.ensure_future(b(j)) for j in jobs[1:]]
    await asyncio.sleep(0.05)
    scorer.release.set()
    return list(await asyncio.gather(first, *rest, return_exceptions=True))


def test_calls_that_arrive_while_a_batch_runs_form_the_next_batch() -> None:
    scorer = Scorer()
    sizes: list[int] = []
    b = batcher(scorer)
    b.observe = sizes.append
    answers = asyncio.run(call_all(b, scorer, list(range(10))))
    assert answers == [2 * j for j in range(10)]
    assert scorer.batches == [[0], list(range(1, 10))] and sizes == [1, 9]


def test_a_batch_holds_at_most_max_batch_size_jobs_oldest_first() -> None:
    scorer = Scorer()
    answers = asyncio.run(call_all(batcher(scorer, max_batch_size=4), scorer, list(range(10))))
    assert answers == [2 * j for j in range(10)]
    assert scorer.batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9]]


def test_a_jobs_own_error_reaches_only_its_caller() -> None:
    scorer = Scorer()
    answers = asyncio.run(call_all(batcher(scorer), scorer, [1, 2, -3, 4]))
    assert answers[:2] == [2, 4] and answers[3] == 8
    assert isinstance(answers[2], ValueError) and "bad job -3" in str(answers[2])


def test_a_failed_batch_fails_each_of_its_callers() -> None:
    def broken(jobs: Sequence[int]) -> list[int]:
        raise RuntimeError("the model is gone")

    async def run() -> list[int | BaseException]:
        b: Batcher[int, int] = Batcher(broken, 8, 10.0, overloaded=lambda: Overloaded())
        return list(await asyncio.gather(b(1), b(2), return_exceptions=True))

    answers = asyncio.run(run())
    assert [type(a) for a in answers] == [RuntimeError, RuntimeError]


def test_calls_queued_past_the_latency_limit_are_refused_as_overloaded() -> None:
    scorer = Scorer()

    async def run() -> list[int | BaseException]:
        b = batcher(scorer, max_latency_s=0.1)
        first = asyncio.ensure_future(b(1))
        await asyncio.sleep(0.05)
        late = [asyncio.ensure_future(b(j)) for j in (2, 3)]
        await asyncio.sleep(0.3)  # they have now waited longer than the limit behind the first batch
        scorer.release.set()
        answers = list(await asyncio.gather(first, *late, return_exceptions=True))
        answers.append(await b(4))  # the batcher still works afterwards
        return answers

    answers = asyncio.run(run())
    assert answers[0] == 2 and answers[3] == 8
    assert all(isinstance(a, Overloaded) for a in answers[1:3])
    assert scorer.batches == [[1], [4]]


def test_a_caller_that_leaves_does_not_disturb_the_others() -> None:
    scorer = Scorer()

    async def run() -> list[int | BaseException]:
        b = batcher(scorer)
        first = asyncio.ensure_future(b(1))
        await asyncio.sleep(0.05)
        gone, stays = asyncio.ensure_future(b(2)), asyncio.ensure_future(b(3))
        await asyncio.sleep(0.01)
        gone.cancel()
        scorer.release.set()
        return list(await asyncio.gather(first, stays))

    assert asyncio.run(run()) == [2, 6]
    assert scorer.batches == [[1], [3]]


@pytest.mark.parametrize("n_jobs", [1, 100])
def test_every_call_is_answered_when_calls_arrive_all_at_once(n_jobs: int) -> None:
    scorer = Scorer()
    scorer.release.set()

    async def run() -> list[int]:
        b = batcher(scorer, max_batch_size=16)
        return list(await asyncio.gather(*(b(j) for j in range(n_jobs))))

    assert asyncio.run(run()) == [2 * j for j in range(n_jobs)]
    assert sum(len(batch) for batch in scorer.batches) == n_jobs
    assert max(len(batch) for batch in scorer.batches) <= 16
