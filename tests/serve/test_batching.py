"""DynamicBatcher: batches formed from concurrent requests, one answer per request, errors and
limits, groups, shutdown."""

import asyncio
import threading

import pytest
import torch

from sightkit.serve.batching import BatcherClosedError, DynamicBatcher, QueueFullError


def run(coroutine):
    return asyncio.run(coroutine)


def test_concurrent_requests_share_batches_and_get_their_own_answers() -> None:
    """Ten requests submitted together with max_batch=4 and a long wait: batches of 4, 4 and 2,
    and each request gets the answer to its own item."""
    batches: list[list[int]] = []

    def infer(items: list[int]) -> list[int]:
        batches.append(list(items))
        return [item * 10 for item in items]

    async def main() -> list[int]:
        batcher = DynamicBatcher(infer, max_batch=4, max_wait_ms=200)
        await batcher.start()
        answers = await asyncio.gather(*(batcher.submit(i) for i in range(10)))
        await batcher.close()
        return answers

    assert run(main()) == [i * 10 for i in range(10)]
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_max_batch_one_runs_each_item_alone() -> None:
    batches: list[list[int]] = []

    def infer(items: list[int]) -> list[int]:
        batches.append(list(items))
        return items

    async def main() -> None:
        batcher = DynamicBatcher(infer, max_batch=1, max_wait_ms=200)
        await batcher.start()
        await asyncio.gather(*(batcher.submit(i) for i in range(3)))
        await batcher.close()

    run(main())
    assert batches == [[0], [1], [2]]


def test_groups_never_share_a_batch_and_keep_their_order() -> None:
    """Items in groups by parity: the oldest item's group goes first, the rest wait their turn."""
    batches: list[list[int]] = []

    def infer(items: list[int]) -> list[int]:
        batches.append(list(items))
        return items

    async def main() -> list[int]:
        batcher = DynamicBatcher(infer, max_batch=2, max_wait_ms=200, group=lambda item: item % 2)
        await batcher.start()
        answers = await asyncio.gather(*(batcher.submit(i) for i in (1, 2, 3, 4, 5)))
        await batcher.close()
        return answers

    assert run(main()) == [1, 2, 3, 4, 5]
    assert batches == [[1, 3], [2, 4], [5]]


def test_infer_runs_in_another_thread_under_inference_mode() -> None:
    seen = {}

    def infer(items: list[int]) -> list[int]:
        seen["inference_mode"] = torch.is_inference_mode_enabled()
        seen["thread"] = threading.current_thread().name
        return items

    async def main() -> None:
        batcher = DynamicBatcher(infer, max_batch=2, max_wait_ms=0)
        await batcher.start()
        await batcher.submit(1)
        await batcher.close()

    run(main())
    assert seen["inference_mode"] is True
    assert seen["thread"].startswith("sightkit-infer")


def test_an_error_fails_only_the_item_that_fails_alone_and_the_batcher_goes_on() -> None:
    """A batch that raises is computed again one item at a time: the bad item's request gets the
    error, its batch-mate its answer (it got the bad item's error before)."""
    calls: list[list[int]] = []

    def infer(items: list[int]) -> list[int]:
        calls.append(list(items))
        if -1 in items:
            raise RuntimeError("bad item in batch")
        return [2 * item for item in items]

    async def main() -> tuple[list[object], int]:
        batcher = DynamicBatcher(infer, max_batch=2, max_wait_ms=200)
        await batcher.start()
        first = await asyncio.gather(batcher.submit(-1), batcher.submit(5), return_exceptions=True)
        after = await batcher.submit(7)
        await batcher.close()
        return first, after

    (error, answer), after = run(main())
    assert isinstance(error, RuntimeError) and "bad item" in str(error)
    assert (answer, after) == (10, 14)
    assert calls == [[-1, 5], [-1], [5], [7]]


def test_a_wrong_number_of_results_is_an_error() -> None:
    async def main() -> None:
        batcher = DynamicBatcher(lambda items: [*items, 0], max_batch=2, max_wait_ms=200)
        await batcher.start()
        try:
            await asyncio.gather(batcher.submit(1), batcher.submit(2))
        finally:
            await batcher.close()

    with pytest.raises(RuntimeError, match="returned 2 results for a batch of 1"):
        run(main())


def test_full_queue_timeout_and_close() -> None:
    """While the model is busy: the queue fills up to max_queue and then refuses; a request
    that times out is dropped before the model sees it; close fails what still waits."""
    release = threading.Event()
    seen: list[int] = []

    def infer(items: list[int]) -> list[int]:
        seen.extend(items)
        release.wait(10)
        return items

    async def main() -> None:
        batcher = DynamicBatcher(infer, max_batch=1, max_wait_ms=0, max_queue=2)
        await batcher.start()
        busy = asyncio.ensure_future(batcher.submit(0))
        while not seen:  # the model is now busy with item 0
            await asyncio.sleep(0.001)
        with pytest.raises(TimeoutError):
            await batcher.submit(1, timeout=0.01)
        waiting = asyncio.ensure_future(batcher.submit(2))
        other = asyncio.ensure_future(batcher.submit(3))
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError, match=r"max_queue=2"):
            await batcher.submit(4)
        release.set()
        assert await busy == 0
        assert await waiting == 2 and await other == 3
        release.clear()
        blocked = asyncio.ensure_future(batcher.submit(5))
        while 5 not in seen:
            await asyncio.sleep(0.001)
        pending = asyncio.ensure_future(batcher.submit(6))
        await asyncio.sleep(0)
        release.set()
        await batcher.close()
        assert await blocked == 5
        with pytest.raises(BatcherClosedError, match="shutting down"):
            await pending
        with pytest.raises(BatcherClosedError, match="not running"):
            await batcher.submit(7)

    run(main())
    assert 1 not in seen  # the timed-out request never reached the model


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_batch": 0}, "max_batch must be an integer >= 1, got 0"),
        ({"max_batch": 2.0}, "max_batch must be an integer >= 1, got 2.0"),
        ({"max_wait_ms": -1}, "max_wait_ms must be a finite number >= 0, got -1"),
        ({"max_wait_ms": float("inf")}, "max_wait_ms must be a finite number >= 0, got inf"),
        ({"max_queue": 0}, "max_queue must be an integer >= 1, got 0"),
    ],
)
def test_bad_settings_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DynamicBatcher(lambda items: items, **kwargs)
