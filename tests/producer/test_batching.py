"""The coalescer's timing rules, the batch message and the batching settings, without servers."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from producer.batching import BatchLimits, Coalescer
from producer.errors import BrokerUnavailableError, ConfigError, EmbedqError, MessageDecodeError
from producer.protocol.batches import BatchItem, BatchRequest, decode_notice, encode_notice
from producer.settings import load_settings


class Recorder:
    def __init__(self, fail_with: EmbedqError | None = None) -> None:
        self.sent: queue.Queue[list[str]] = queue.Queue()
        self.failed: dict[str, EmbedqError] = {}
        self.fail_with = fail_with

    def send(self, items: list[BatchItem]) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.sent.put([item.id for item in items])

    def fail(self, ids: list[str], error: EmbedqError) -> None:
        self.failed.update(dict.fromkeys(ids, error))


def _item(item_id: str, texts: int = 1) -> BatchItem:
    return BatchItem(item_id, "query", tuple(f"text {i}" for i in range(texts)))


def test_a_lone_request_leaves_at_once_and_later_ones_wait_for_an_answered_batch() -> None:
    recorder = Recorder()
    coalescer = Coalescer(BatchLimits(wait_ms=0, max_in_flight=1), recorder.send, recorder.fail, "t")
    try:
        started = time.monotonic()
        coalescer.add(_item("lone"))
        assert recorder.sent.get(timeout=1) == ["lone"]
        assert time.monotonic() - started < 0.5
        for name in "abc":
            coalescer.add(_item(name))
        with pytest.raises(queue.Empty):
            recorder.sent.get(timeout=0.2)  # "lone" is unanswered: the next batch waits
        coalescer.batch_answered()
        assert recorder.sent.get(timeout=1) == ["a", "b", "c"]
    finally:
        coalescer.close()


def test_a_full_batch_leaves_at_once_and_batches_respect_the_text_limit() -> None:
    recorder = Recorder()
    coalescer = Coalescer(BatchLimits(wait_ms=1000, max_texts=4), recorder.send, recorder.fail, "t")
    try:
        coalescer.add(_item("first"))
        assert recorder.sent.get(timeout=1) == ["first"]
        coalescer.add(_item("a", 3))
        coalescer.add(_item("b", 2))  # 5 texts waiting: full, so no 1 s window
        assert recorder.sent.get(timeout=0.5) == ["a"]
    finally:
        coalescer.close()
    assert recorder.sent.get(timeout=1) == ["b"]  # close() sends what still waits


def test_a_failed_send_fails_every_request_of_its_batch() -> None:
    error = BrokerUnavailableError("broker down")
    recorder = Recorder(fail_with=error)
    coalescer = Coalescer(BatchLimits(wait_ms=0), recorder.send, recorder.fail, "t")
    coalescer.add(_item("x"))
    coalescer.close()
    assert recorder.failed == {"x": error}


def test_batch_limits_are_checked() -> None:
    with pytest.raises(ConfigError, match="batch_wait_ms"):
        BatchLimits(wait_ms=-1)
    with pytest.raises(ConfigError, match="batch_max_in_flight"):
        BatchLimits(max_in_flight=0)
    assert BatchLimits(max_texts=2).admits(["a", "b"]) and not BatchLimits(max_texts=2).admits(["a"] * 3)


def test_batch_request_round_trip_and_malformed_items() -> None:
    batch = BatchRequest(
        "m", (BatchItem("1", "query", ("a",), 5.0), BatchItem("2", "document", ("b", "c"))), "ch"
    )
    assert BatchRequest.decode(batch.encode()) == batch
    payload = batch.encode()
    payload["items"][1][0] = "1"
    with pytest.raises(MessageDecodeError, match="repeat an id"):
        BatchRequest.decode(payload)
    payload["items"][1] = ["2", "query", ["b"], "soon"]
    with pytest.raises(MessageDecodeError, match=r"items\[1\]\.deadline"):
        BatchRequest.decode(payload)
    assert decode_notice(encode_notice([("1", b"raw")])) == [("1", b"raw")]
    with pytest.raises(MessageDecodeError):
        decode_notice(b"\x93")


def test_batching_settings_from_the_environment() -> None:
    settings = load_settings({"EMBEDQ_BATCH_WAIT_MS": "0.5", "EMBEDQ_BATCH_MAX_TEXTS": "64"})
    assert settings.batch_wait_ms == 0.5 and settings.batch_max_texts == 64
    assert load_settings({"EMBEDQ_BATCH_WAIT_MS": "off"}).batch_wait_ms is None
    with pytest.raises(ConfigError, match="EMBEDQ_BATCH_WAIT_MS"):
        load_settings({"EMBEDQ_BATCH_WAIT_MS": "soon"})
    with pytest.raises(ConfigError, match="EMBEDQ_BATCH_MAX_IN_FLIGHT"):
        load_settings({"EMBEDQ_BATCH_MAX_IN_FLIGHT": "0"})


def test_threads_never_lose_a_request() -> None:
    recorder = Recorder()
    coalescer = Coalescer(BatchLimits(wait_ms=0.5, max_texts=7), recorder.send, recorder.fail, "t")

    def add_many(prefix: str) -> None:
        for number in range(200):
            coalescer.add(_item(f"{prefix}{number}"))
            coalescer.batch_answered()

    threads = [threading.Thread(target=add_many, args=(str(n),)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    coalescer.close()
    sent: list[str] = []
    while not recorder.sent.empty():
        batch = recorder.sent.get()
        assert len(batch) <= 7
        sent.extend(batch)
    assert sorted(sent) == sorted(f"{n}{i}" for n in range(8) for i in range(200))


def test_a_task_expired_by_its_deadline_reads_as_a_deadline_error() -> None:
    from celery.exceptions import TaskRevokedError

    from producer.errors import DeadlineExceededError
    from producer.job import outcome_of

    outcome = outcome_of({"status": "REVOKED", "result": TaskRevokedError("expired")})
    assert outcome.state == "failed" and isinstance(outcome.error, DeadlineExceededError)
    assert isinstance(outcome.error, TimeoutError) and "deadline passed" in str(outcome.error)
