"""Gathering concurrent calls from many threads into one batched call.

The bot and the arena play many games at once, one thread per game, over one
model. :class:`Batcher` turns their concurrent ``submit`` calls into batches:
there is no background thread; the first caller that finds the model idle becomes
the *leader*, takes every queued request (up to ``max_items``), runs them as one
batch, hands each caller its result, and leaves once its own request is answered
(another waiting caller then leads). While a batch runs, new requests queue up and
go together in the next one.

After a batch of several requests the leader waits up to ``gather_s`` for as many
requests as the last batch had (or, with ``gather_items``, for that many), so that
games whose threads were a moment late (pushing a move, building a prompt) are not
split into a batch of one and a batch of the rest. ``gather_items`` set to the number
of games makes every game ride in one batch when they are all back within
``gather_s`` (meant for devices where each batch has a large fixed cost, such as an
NF4 model's dequantization; measured on the H200 it lost to the pipelined batcher:
docs/fastpath.md).

**Pipelined** (``launch``/``finish``/``ready`` given instead of only ``run``): a batch
is *launched* (its device work queued) and *finished* later (its results read). While
one batch runs on the device, the leader waits for the other games' requests and,
once they are queued, launches them before finishing the running batch, so the device has the next batch queued while the host hands out
results and the games' threads build their next prompts. At most two batches are in
flight. The number of games in circulation (queued or running, the most seen over the
last batches) tells how many requests the running batch leaves to wait for; a batch
launched beside a running one takes at most half of them, so two groups of about equal
size form and take turns. A leader whose own request is answered leaves even with a
batch in flight: one of that batch's waiting callers leads next.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

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
        launch: Callable[[list[J]], Any] | None = None,
        finish: Callable[[Any], Sequence[R | BaseException]] | None = None,
        ready: Callable[[Any], bool] | None = None,
        poll_s: float = 0.0005,
        gather_items: int = 0,
    ) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, not {max_items}")
        if (launch is None) != (finish is None) or (launch is None) != (ready is None):
            raise ValueError("launch, finish and ready go together")
        self._run = run
        self._launch = launch
        self._finish = finish
        self._ready = ready
        self.poll_s = poll_s
        self._inflight: collections.deque[tuple[list[_Entry[J, R]], Any]] = collections.deque()
        self._circulating: collections.deque[int] = collections.deque(maxlen=16)
        self.overlapped = 0  # batches launched while another was running
        self.max_items = max_items
        self.gather_s = gather_s
        if gather_items < 0:
            raise ValueError(f"gather_items must be >= 0, not {gather_items}")
        self.gather_items = gather_items
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
            if self._launch is not None:
                self._lead_pipelined(entry)
            else:
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
                self._deliver(batch, results)
        finally:
            with self._cv:
                self._leading = False
                self._cv.notify_all()

    def _lead_pipelined(self, own: _Entry[J, R]) -> None:
        assert self._launch is not None and self._finish is not None and self._ready is not None
        launch, finish = self._launch, self._finish
        inflight = self._inflight
        try:
            while not own.done:
                if len(inflight) < 2:
                    running = inflight[0][1] if inflight else None
                    batch = self._take(running=running)
                    if batch:
                        if running is not None:
                            self.overlapped += 1
                        try:
                            handle = launch([e.item for e in batch])
                        except BaseException as exc:
                            self._deliver(batch, [exc] * len(batch))
                            continue
                        inflight.append((batch, handle))
                        if running is None:
                            continue  # the device was idle: look for the next batch while this one runs
                if not inflight:
                    break  # nothing queued, nothing running
                batch, handle = inflight.popleft()
                try:
                    results = finish(handle)
                    if len(results) != len(batch):
                        raise RuntimeError(f"batch of {len(batch)} answered with {len(results)} results")
                except BaseException as exc:
                    results = [exc] * len(batch)
                self._deliver(batch, results)
        finally:
            with self._cv:
                self._leading = False
                self._cv.notify_all()

    def _deliver(self, batch: list[_Entry[J, R]], results: Sequence[R | BaseException]) -> None:
        with self._cv:
            for e, r in zip(batch, results, strict=True):
                if isinstance(r, BaseException):
                    e.error = r
                else:
                    e.result = r
                e.done = True
            self._cv.notify_all()

    def _take(self, running: Any = None) -> list[_Entry[J, R]]:
        """The next batch.

        With a batch ``running`` on the device: once the games in circulation that are
        not running have asked, the queued requests; but at most half the games in
        circulation, so that two groups of about equal size form and take turns on the
        device (one group's host work hides behind the other's forward). Nothing when
        the running batch is done first: it is then finished, and the queue gathered as
        usual.
        """
        with self._cv:
            inflight = sum(len(b) for b, _ in self._inflight)
            self._circulating.append(len(self._queue) + inflight)
            limit = self.max_items
            if running is not None:
                assert self._ready is not None
                n = max(self._circulating)
                limit = max(1, min(n - inflight, -(-n // 2), self.max_items))
                while len(self._queue) < limit:
                    if self._ready(running):
                        return []
                    self._cv.wait(self.poll_s)
            elif self.gather_s > 0 and (self._last_batch > 1 or self.gather_items > 1):
                deadline = time.monotonic() + self.gather_s
                want = min(self.gather_items or self._last_batch, self.max_items)
                while len(self._queue) < want:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cv.wait(left)
            batch: list[_Entry[J, R]] = []
            while self._queue and len(batch) < limit:
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
