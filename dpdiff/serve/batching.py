"""Micro-batching: concurrent requests share model calls.

Requests put their image on one queue; a single worker thread takes the first waiting item, then collects more
until it holds ``max_batch`` items or ``max_wait_s`` has passed since it took the first one (whatever is already
queued at that moment is still taken, up to ``max_batch``), and hands the whole batch to ``run_batch`` in ONE
call. Under load the queue fills while the model runs, so batches grow towards ``max_batch`` and throughput
towards the batch throughput of ``dpdiff benchmark``; a lone request waits at most ``max_wait_s`` extra.

The worker is the only thread that runs the model, so the model needs no locking. Each submitted item gets a
:class:`concurrent.futures.Future` resolved with its :class:`Outcome` (its result plus how long it queued, the
model-call time and the size of the batch it ran in) or with the exception ``run_batch`` raised for its batch.
A future cancelled before its batch starts (the client went away) is dropped from the batch.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["MicroBatcher", "Outcome", "BatcherClosed"]

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")

_STOP = object()


class BatcherClosed(RuntimeError):
    """The batcher was closed before the item ran."""


@dataclass(frozen=True)
class Outcome(Generic[Result]):
    """An item's result, with ``queued_s`` (submit -> its batch started), ``model_s`` (the batch call) and
    ``batch_size`` (items in that call)."""

    result: Result
    queued_s: float
    model_s: float
    batch_size: int


@dataclass
class _Job:
    item: Any
    future: Future
    submitted: float


class MicroBatcher(Generic[Item, Result]):
    """Collects submitted items into batches for ``run_batch(items) -> results`` (same length, same order).

    Use as a context manager, or call :meth:`start` and :meth:`close`. ``stats`` counts calls and items."""

    def __init__(
        self,
        run_batch: Callable[[list[Item]], Sequence[Result]],
        max_batch: int = 16,
        max_wait_s: float = 0.010,
        name: str = "dpdiff-batcher",
    ):
        if int(max_batch) < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if not float(max_wait_s) >= 0.0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self.run_batch = run_batch
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_s)
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self.stats = {"batches": 0, "items": 0, "largest_batch": 0}

    # ---------------------------------------------------------------------------------------------- lifecycle
    def start(self) -> MicroBatcher[Item, Result]:
        self._thread.start()
        return self

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop taking items, let the worker finish the queued ones, and wait for it (at most ``timeout`` s)."""
        with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
            self._queue.put(_STOP)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def pending(self) -> int:
        """Items waiting for a batch (approximate)."""
        return self._queue.qsize()

    # ---------------------------------------------------------------------------------------------- use
    def submit(self, item: Item) -> Future[Outcome[Result]]:
        """Queue one item; its future resolves to an :class:`Outcome` (or the batch's exception)."""
        future: Future = Future()
        with self._lock:
            if self._closed.is_set():
                raise BatcherClosed("the batcher is closed")
            self._queue.put(_Job(item, future, time.perf_counter()))
        return future

    # ---------------------------------------------------------------------------------------------- worker
    def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        """(the batch started by ``first``, whether a stop request was met while collecting)."""
        batch, deadline = [first], time.perf_counter() + self.max_wait_s
        while len(batch) < self.max_batch:
            remaining = deadline - time.perf_counter()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                return batch, True
            batch.append(job)
        return batch, False

    def _work(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is _STOP:
                break
            batch, stop = self._collect(first)
            self._run([job for job in batch if job.future.set_running_or_notify_cancel()])
        # closed: whatever is still queued was submitted before close(); it would never run
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not _STOP and job.future.set_running_or_notify_cancel():
                job.future.set_exception(BatcherClosed("the server is shutting down"))

    def _run(self, batch: list[_Job]) -> None:
        if not batch:
            return
        start = time.perf_counter()
        try:
            results = list(self.run_batch([job.item for job in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} items")
        except Exception as e:  # every waiting request gets the error; the worker keeps serving
            log.exception("batch of %d failed", len(batch))
            for job in batch:
                job.future.set_exception(e)
            return
        model_s = time.perf_counter() - start
        self.stats["batches"] += 1
        self.stats["items"] += len(batch)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
        for job, result in zip(batch, results, strict=True):
            job.future.set_result(Outcome(result, start - job.submitted, model_s, len(batch)))
