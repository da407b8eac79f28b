from __future__ import annotations

import numpy as np
import pytest
from celery import Celery

from producer.errors import (
    InvalidInputError,
    MessageDecodeError,
    ModelMismatchError,
    SinkUnavailableError,
)
from producer.protocol.messages import EmbedRequest, EmbedResult
from producer.protocol.names import TASK_EMBED_DOCUMENTS, TASK_EMBED_QUERIES
from tests.support.fakes import FakeEncoder
from worker.queue.tasks import EmbedTask, TextLimits, embed_request, register_tasks

LIMITS = TextLimits(max_texts=5, max_text_chars=10)


@pytest.fixture
def eager_app() -> Celery:
    app = Celery("embedq-test-tasks", set_as_current=False)
    app.conf.update(task_always_eager=True, task_store_eager_result=False)
    return app


def test_embed_request_encodes_with_the_workers_model() -> None:
    result = embed_request(FakeEncoder(), EmbedRequest("org/fake", "document", ("ab", "", "xyz")), LIMITS)
    assert (result.model, result.dim, result.count) == ("org/fake", 4, 3)
    np.testing.assert_array_equal(result.to_array()[:, 0], [2, 0, 3])


def test_a_request_for_another_model_is_refused_naming_both() -> None:
    encoder = FakeEncoder()
    with pytest.raises(ModelMismatchError) as raised:
        embed_request(encoder, EmbedRequest("org/other", "query", ("a",)), LIMITS)
    assert "'org/other'" in str(raised.value) and "'org/fake'" in str(raised.value)
    assert encoder.calls == 0


def test_limits_are_enforced_again_on_the_worker() -> None:
    with pytest.raises(InvalidInputError, match=r"texts\[1\] has 11 characters"):
        embed_request(FakeEncoder(), EmbedRequest("org/fake", "query", ("a", "x" * 11)), LIMITS)
    with pytest.raises(InvalidInputError, match="got 6 texts"):
        embed_request(FakeEncoder(), EmbedRequest("org/fake", "query", ("a",) * 6), LIMITS)


def test_registered_tasks_round_trip_a_request(eager_app: Celery) -> None:
    register_tasks(eager_app, FakeEncoder(), LIMITS)
    for name, kind in ((TASK_EMBED_DOCUMENTS, "document"), (TASK_EMBED_QUERIES, "query")):
        payload = eager_app.tasks[name].apply(args=[EmbedRequest("org/fake", kind, ("abc",)).encode()]).get()
        assert EmbedResult.decode(payload).to_array().tolist() == [[3.0, 0.0, 0.0, 0.0]]


@pytest.mark.parametrize(
    ("args", "kwargs", "complaint"),
    [
        (["not a map"], {}, "must be a map"),
        ([], {}, "one positional request"),
        ([EmbedRequest("org/fake", "query", ("a",)).encode()], {}, "a query request was sent to the"),
    ],
)
def test_malformed_messages_fail_as_message_decode_errors(
    eager_app: Celery, args: list[object], kwargs: dict[str, object], complaint: str
) -> None:
    register_tasks(eager_app, FakeEncoder(), LIMITS)
    outcome = eager_app.tasks[TASK_EMBED_DOCUMENTS].apply(args=args, kwargs=kwargs)
    assert outcome.failed()
    assert isinstance(outcome.result, MessageDecodeError) and complaint in str(outcome.result)


def _flaky_task(app: Celery, failures: list[Exception]) -> tuple[EmbedTask, list[int]]:
    """A task on the EmbedTask base that raises the given errors in turn, then succeeds."""
    attempts: list[int] = []

    @app.task(base=EmbedTask, bind=True, name="embedq.test_flaky", shared=False)
    def flaky(self: EmbedTask) -> str:
        attempts.append(self.request.retries)
        if len(attempts) <= len(failures):
            raise failures[len(attempts) - 1]
        return "ok"

    return app.tasks["embedq.test_flaky"], attempts


def test_transient_errors_are_retried(eager_app: Celery) -> None:
    task, attempts = _flaky_task(eager_app, [SinkUnavailableError("down"), SinkUnavailableError("down")])
    task.apply()
    assert attempts == [0, 1, 2]


def test_transient_errors_give_up_after_max_retries(eager_app: Celery) -> None:
    task, attempts = _flaky_task(eager_app, [SinkUnavailableError("down")] * 10)
    with pytest.raises(SinkUnavailableError):
        task.apply().get()
    assert attempts == list(range(EmbedTask.max_retries + 1))


@pytest.mark.parametrize(
    "error", [InvalidInputError("bad"), MessageDecodeError("bad"), ModelMismatchError("bad"), KeyError("bug")]
)
def test_permanent_and_unexpected_errors_are_never_retried(eager_app: Celery, error: Exception) -> None:
    task, attempts = _flaky_task(eager_app, [error])
    outcome = task.apply()
    assert outcome.failed() and type(outcome.result) is type(error)
    assert attempts == [0]


def test_backoff_doubles_up_to_the_cap() -> None:
    task = EmbedTask()
    for retries in range(12):
        ceiling = min(EmbedTask.retry_backoff_max_s, EmbedTask.retry_backoff_base_s * 2**retries)
        delays = [task.retry_countdown_s(retries) for _ in range(50)]
        assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
    assert task.retry_countdown_s(30) <= EmbedTask.retry_backoff_max_s


def test_the_first_retry_delay_is_set_at_registration(eager_app: Celery) -> None:
    register_tasks(eager_app, FakeEncoder(), LIMITS, retry_backoff_s=0.1)
    task = eager_app.tasks[TASK_EMBED_DOCUMENTS]
    delays = [[task.retry_countdown_s(retries) for _ in range(50)] for retries in range(3)]
    assert [(min(d) >= 0.05 * 2**n, max(d) <= 0.1 * 2**n) for n, d in enumerate(delays)] == [(True, True)] * 3
    assert EmbedTask.retry_backoff_base_s == 1.0  # other apps keep the default


def test_tasks_are_registered_only_on_their_app(eager_app: Celery) -> None:
    register_tasks(eager_app, FakeEncoder(), LIMITS)
    other = Celery("embedq-other", set_as_current=False)
    assert TASK_EMBED_DOCUMENTS in eager_app.tasks
    assert TASK_EMBED_DOCUMENTS not in other.tasks
