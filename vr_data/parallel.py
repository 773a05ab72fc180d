"""Parallel map over a standard `concurrent.futures.Executor`.

Library functions take an optional executor and never set up clusters themselves; the CLI
layer makes one (a dask `Client(...).get_executor()` for a local cluster or a remote scheduler).
`None` means run in this process, in order, which tests and small jobs use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, as_completed
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def map_unordered(
    function: Callable[..., R], items: Iterable[T], executor: Executor | None = None, *, max_pending: int = 256
) -> Iterator[tuple[T, R]]:
    """Yield `(item, function(item))` as results finish (in order when `executor` is None).

    At most `max_pending` tasks are in flight, so a million-item scan does not submit a million
    futures at once. Exceptions raised by `function` propagate to the caller.
    """
    if executor is None:
        for item in items:
            yield item, function(item)
        return
    pending: dict[Any, T] = {}
    iterator = iter(items)
    exhausted = False
    while pending or not exhausted:
        while not exhausted and len(pending) < max_pending:
            try:
                item = next(iterator)
            except StopIteration:
                exhausted = True
                break
            pending[executor.submit(function, item)] = item
        if not pending:
            break
        done = next(as_completed(pending))
        item = pending.pop(done)
        yield item, done.result()
