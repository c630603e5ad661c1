"""Gathering concurrent calls from many threads into one batched call.

The bot and the arena play many games at once, one thread per game, over one
model. :class:`Batcher` turns their concurrent ``submit`` calls into batches:
there is no background thread; the first caller that finds the model idle becomes
the *leader*, takes every queued request (up to ``max_items``), runs them as one
batch, hands each caller its result, and leaves once its own request is answered
(another waiting caller then leads). While a batch runs, new requests queue up and
go together in the next one.

After a batch of several requests the leader waits up to ``gather_s`` for as many
requests as the last batch had, so that games whose threads were a moment late
(pushing a move, building a prompt) are not split into a batch of one and a
batch of the rest.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

J = TypeVar("J")
R = TypeVar("R")


class _Entry(Generic[J, R]):
    __slots__ = ("item", "cancel", "done", "result", "error")

    def __init__(self, item: J, cancel: threading.Event | None) -> None:
        self.item = item
        self.cancel = cancel
        self.done = False
        self.result: R | None = None
        self.error: BaseException | None = None


class Batcher(Generic[J, R]):
    """``submit(item)`` from any thread; items are run by ``run(batch)`` in batches.

    ``run`` returns one result per item, or an exception instance for an item that
    failed; an exception raised by ``run`` itself fails the whole batch.
    ``cancelled`` builds the exception a request whose event is set before its batch
    starts gets.
    """

    def __init__(
        self,
        run: Callable[[list[J]], Sequence[R | BaseException]],
        *,
        max_items: int,
        gather_s: float = 0.0,
        cancelled: Callable[[], BaseException] = lambda: RuntimeError("cancelled"),
    ) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, not {max_items}")
        self._run = run
        self.max_items = max_items
        self.gather_s = gather_s
        self._cancelled = cancelled
        self._cv = threading.Condition()
        self._queue: collections.deque[_Entry[J, R]] = collections.deque()
        self._leading = False
        self._last_batch = 0
        self.batches = 0
        self.items = 0
        self.largest = 0

    def submit(self, item: J, cancel: threading.Event | None = None) -> R:
        entry: _Entry[J, R] = _Entry(item, cancel)
        with self._cv:
            self._queue.append(entry)
            self._cv.notify_all()
            while not entry.done and self._leading:
                self._cv.wait()
            if not entry.done:
                self._leading = True
        if not entry.done:
            self._lead(entry)
        if entry.error is not None:
            raise entry.error
        return entry.result  # type: ignore[return-value]

    def _lead(self, own: _Entry[J, R]) -> None:
        try:
            while not own.done:
                batch = self._take()
                if not batch:
                    break
                try:
                    results: Sequence[R | BaseException] = self._run([e.item for e in batch])
                    if len(results) != len(batch):
                        raise RuntimeError(f"batch of {len(batch)} answered with {len(results)} results")
                except BaseException as exc:  # the caller of each entry sees it
                    results = [exc] * len(batch)
                with self._cv:
                    for e, r in zip(batch, results, strict=True):
                        if isinstance(r, BaseException):
                            e.error = r
                        else:
                            e.result = r
                        e.done = True
                    self._cv.notify_all()
        finally:
            with self._cv:
                self._leading = False
                self._cv.notify_all()

    def _take(self) -> list[_Entry[J, R]]:
        with self._cv:
            if self.gather_s > 0 and self._last_batch > 1:
                deadline = time.monotonic() + self.gather_s
                while len(self._queue) < min(self._last_batch, self.max_items):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cv.wait(left)
            batch: list[_Entry[J, R]] = []
            while self._queue and len(batch) < self.max_items:
                e = self._queue.popleft()
                if e.cancel is not None and e.cancel.is_set():
                    e.error = self._cancelled()
                    e.done = True
                    continue
                batch.append(e)
            self._cv.notify_all()
            if batch:
                self._last_batch = len(batch)
                self.batches += 1
                self.items += len(batch)
                self.largest = max(self.largest, len(batch))
            return batch
