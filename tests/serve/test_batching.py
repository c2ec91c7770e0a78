"""The micro-batcher (dpdiff/serve/batching.py) with a stand-in model: how batches form, in what order results come
back, what happens on errors, cancellations and shutdown."""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError, wait

import pytest

from dpdiff.serve.batching import BatcherClosed, MicroBatcher


class Recorder:
    """A stand-in model: records each call's items, optionally blocks until released, returns item * 10."""

    def __init__(self, hold: threading.Event | None = None, fail_on=None):
        self.calls: list[list] = []
        self.hold, self.fail_on = hold, fail_on
        self.started = threading.Event()

    def __call__(self, items):
        self.calls.append(list(items))
        self.started.set()
        if self.hold is not None:
            assert self.hold.wait(10)
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"cannot score {self.fail_on}")
        return [i * 10 for i in items]


def test_queued_items_share_one_call_up_to_max_batch():
    hold = threading.Event()
    model = Recorder(hold)
    with MicroBatcher(model, max_batch=4, max_wait_s=0.05) as batcher:
        first = batcher.submit(0)
        assert model.started.wait(5)  # the worker is busy with [0]; the next ten queue up meanwhile
        futures = [batcher.submit(i) for i in range(1, 11)]
        hold.set()
        results = [f.result(10) for f in [first, *futures]]
    assert [r.result for r in results] == [i * 10 for i in range(11)]  # each request gets its own answer
    assert model.calls == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]  # FIFO, never more than max_batch per call
    assert [r.batch_size for r in results] == [1, 4, 4, 4, 4, 4, 4, 4, 4, 2, 2]
    assert batcher.stats == {"batches": 4, "items": 11, "largest_batch": 4}
    assert all(r.queued_s >= 0 and r.model_s >= 0 for r in results)


def test_a_lone_item_waits_at_most_max_wait():
    model = Recorder()
    with MicroBatcher(model, max_batch=16, max_wait_s=0.2) as batcher:
        t0 = time.perf_counter()
        out = batcher.submit(7).result(10)
        elapsed = time.perf_counter() - t0
    assert out.result == 70 and out.batch_size == 1
    assert 0.15 <= elapsed < 2.0  # it waited for company, then ran alone
    with MicroBatcher(Recorder(), max_batch=1, max_wait_s=5.0) as batcher:
        t0 = time.perf_counter()
        assert batcher.submit(1).result(10).result == 10
        assert time.perf_counter() - t0 < 1.0  # a full batch (of one) does not wait


def test_items_arriving_within_the_wait_join_the_batch():
    model = Recorder()
    with MicroBatcher(model, max_batch=8, max_wait_s=0.5) as batcher:
        futures = [batcher.submit(0)]
        time.sleep(0.05)
        futures += [batcher.submit(i) for i in (1, 2)]
        assert [f.result(10).result for f in futures] == [0, 10, 20]
    assert model.calls == [[0, 1, 2]]


def test_an_error_reaches_every_request_of_its_batch_and_the_worker_goes_on():
    hold = threading.Event()
    model = Recorder(hold, fail_on=3)
    with MicroBatcher(model, max_batch=4, max_wait_s=0.05) as batcher:
        first = batcher.submit(0)
        assert model.started.wait(5)
        bad = [batcher.submit(i) for i in (1, 2, 3)]
        hold.set()
        assert first.result(10).result == 0
        for f in bad:
            with pytest.raises(ValueError, match="cannot score 3"):
                f.result(10)
        assert batcher.submit(5).result(10).result == 50  # still serving


def test_a_wrong_number_of_results_is_an_error_not_a_mixup():
    with MicroBatcher(lambda items: [1], max_batch=4, max_wait_s=0.2) as batcher:
        futures = [batcher.submit(i) for i in range(3)]
        for f in futures:
            with pytest.raises(RuntimeError, match="1 results for 3 items"):
                f.result(10)


def test_cancelled_items_are_dropped_before_their_batch_runs():
    hold = threading.Event()
    model = Recorder(hold)
    with MicroBatcher(model, max_batch=8, max_wait_s=0.05) as batcher:
        batcher.submit(0)
        assert model.started.wait(5)
        keep, gone = batcher.submit(1), batcher.submit(2)
        assert gone.cancel()  # the client went away while queued
        hold.set()
        assert keep.result(10).result == 10
        with pytest.raises(CancelledError):
            gone.result(1)
    assert model.calls == [[0], [1]]


def test_close_finishes_what_is_queued_and_refuses_new_items():
    model = Recorder()
    batcher = MicroBatcher(model, max_batch=2, max_wait_s=0.0).start()
    futures = [batcher.submit(i) for i in range(5)]
    batcher.close()
    done, _ = wait(futures, timeout=10)
    assert len(done) == 5 and sorted(f.result().result for f in futures) == [0, 10, 20, 30, 40]
    with pytest.raises(BatcherClosed):
        batcher.submit(9)
    batcher.close()  # twice is fine


@pytest.mark.parametrize("kw", [{"max_batch": 0}, {"max_wait_s": -1.0}, {"max_wait_s": float("nan")}])
def test_bad_settings_are_refused(kw):
    with pytest.raises(ValueError):
        MicroBatcher(lambda items: items, **kw)
