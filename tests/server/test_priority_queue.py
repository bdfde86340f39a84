"""The request queue and its timeout policy on their own: no threads, no engine, explicit clock values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from google.protobuf import text_format

from tensorgate.clients.pb import model_config_pb2 as mc
from tensorgate.server.model import ModelVersion
from tensorgate.server.plan import read_plan
from tensorgate.server.priority_queue import DELAYED, PriorityQueue
from tensorgate.server.request import InferRequest, RequestedOutput

MODEL = ModelVersion("q", 1, Path("."))
US = 1000  # ns


def _queue(batching: str = "") -> PriorityQueue:
    config = text_format.Parse(f'name: "q" max_batch_size: 8 dynamic_batching {{ {batching} }}', mc.ModelConfig())
    return PriorityQueue(read_plan(config, 1).batching)


def _request(name: str, arrival_ns: int = 0, priority: int = 0, timeout_us: int = 0) -> InferRequest:
    r = InferRequest(MODEL, name, {"x": np.zeros((1, 1), np.float32)}, [RequestedOutput("y", 0)], 1, (), arrival_ns)
    r.priority = priority
    r.timeout_us = timeout_us
    return r


def _admit(q: PriorityQueue, *requests: InferRequest) -> None:
    for r in requests:
        q.assign(r)
        assert q.push(r) >= 0


def _next(q: PriorityQueue) -> InferRequest | None:
    """The next request alone (a model without dynamic batching takes one at a time)."""
    cancelled: list[InferRequest] = []
    batch, rows, _, _ = q.take(0, False, (), cancelled)
    assert not cancelled and rows == len(batch) <= 1
    return batch[0] if batch else None


def _drain(q: PriorityQueue) -> list[str]:
    names = []
    while (r := _next(q)) is not None:
        names.append(r.id)
    return names


def test_take_order_is_priority_then_arrival_with_the_default_level_for_zero_and_out_of_range() -> None:
    q = _queue("priority_levels: 3 default_priority_level: 2")
    _admit(q, _request("low", priority=3), _request("default", priority=0), _request("high", priority=1),
           _request("beyond", priority=9), _request("high2", priority=1))
    assert len(q) == 5
    assert _drain(q) == ["high", "high2", "default", "beyond", "low"]
    assert not q and _next(q) is None


def test_max_queue_size_is_per_level() -> None:
    q = _queue("priority_levels: 2 default_priority_level: 2 "
               "priority_queue_policy { key: 1 value: { max_queue_size: 1 } }")
    first, second, other = _request("a", priority=1), _request("b", priority=1), _request("c", priority=2)
    _admit(q, first, other)
    q.assign(second)
    assert q.push(second) == -1 and q.max_size(second) == 1  # refused, not queued
    assert len(q) == 2
    third = _request("d", priority=2)
    q.assign(third)
    assert q.push(third) == 1 and q.max_size(third) == 0  # the default level is unbounded; one was waiting


def test_reject_fails_timed_out_requests_and_keeps_the_rest_in_order() -> None:
    q = _queue("default_queue_policy { default_timeout_microseconds: 100 }")
    _admit(q, _request("old", 0), _request("mid", 50 * US), _request("new", 90 * US))
    assert q.with_deadline == 3
    expired: list[InferRequest] = []
    q.expire(120 * US, expired)  # "old" (deadline 100 us) has timed out
    assert [r.id for r in expired] == ["old"] and q.with_deadline == 2
    q.expire(120 * US, expired)
    assert [r.id for r in expired] == ["old"]
    assert _drain(q) == ["mid", "new"] and q.with_deadline == 0


def test_delay_moves_timed_out_requests_behind_the_others() -> None:
    q = _queue("default_queue_policy { timeout_action: DELAY default_timeout_microseconds: 100 }")
    _admit(q, _request("late", 0), _request("fresh", 80 * US))
    expired: list[InferRequest] = []
    q.expire(150 * US, expired)
    assert not expired
    _admit(q, _request("newer", 140 * US))
    assert _drain(q) == ["fresh", "newer", "late"]


def test_a_delayed_request_is_not_delayed_when_only_its_grpc_deadline_passed() -> None:
    q = _queue("default_queue_policy { timeout_action: DELAY }")  # no queue timeout of its own
    r = _request("deadline")
    r.deadline_ns = 10 * US  # the client's gRPC deadline
    _admit(q, r)
    expired: list[InferRequest] = []
    q.expire(20 * US, expired)
    assert expired == [r] and not q


def test_a_request_timeout_overrides_only_when_allowed_and_shorter() -> None:
    allowed = _queue("default_queue_policy { default_timeout_microseconds: 100 allow_timeout_override: true }")
    shorter, longer = _request("s", timeout_us=10), _request("l", timeout_us=500)
    allowed.assign(shorter)
    allowed.assign(longer)
    assert (shorter.deadline_ns, longer.deadline_ns) == (10 * US, 100 * US)
    fixed = _queue("default_queue_policy { default_timeout_microseconds: 100 }")
    own = _request("o", timeout_us=10)
    fixed.assign(own)
    assert own.deadline_ns == 100 * US
    nothing = _queue()
    free = _request("f", timeout_us=10)
    nothing.assign(free)
    assert free.deadline_ns == 0  # no policy allows an override: Triton ignores the request's timeout


def test_an_earlier_grpc_deadline_is_kept() -> None:
    q = _queue("default_queue_policy { default_timeout_microseconds: 100 }")
    r = _request("r")
    r.deadline_ns = 30 * US
    q.assign(r)
    assert r.deadline_ns == 30 * US


def test_cancel_removes_a_queued_request_once() -> None:
    q = _queue("default_queue_policy { default_timeout_microseconds: 100 }")
    a, b = _request("a"), _request("b")
    _admit(q, a, b)
    assert q.remove(a) and not q.remove(a)
    assert q.with_deadline == 1 and _drain(q) == ["b"]
    assert not q.remove(b)  # taken: running, no longer queued


def test_cancel_reaches_a_delayed_request() -> None:
    q = _queue("default_queue_policy { timeout_action: DELAY default_timeout_microseconds: 1 }")
    r = _request("r")
    _admit(q, r)
    q.expire(5 * US, [])
    assert r.level == DELAYED and q.remove(r) and not q


def test_requeue_restores_order_level_and_the_deadline_count() -> None:
    q = _queue("priority_levels: 2 default_priority_level: 2 default_queue_policy { default_timeout_microseconds: 100 }")
    _admit(q, _request("h1", priority=1), _request("h2", priority=1), _request("d1", 10 * US))
    taken, rows, _, full = q.take(8, True, (), [])
    assert [r.id for r in taken] == ["h1", "h2", "d1"] and rows == 3 and not full
    assert q.with_deadline == 0
    q.requeue(taken)
    assert q.with_deadline == 3 and _drain(q) == ["h1", "h2", "d1"]
    q.requeue(taken)
    # the requests left behind keep their deadlines counted: expiry still sees them
    first, _, _, full = q.take(1, True, (), [])
    assert [r.id for r in first] == ["h1"] and full and q.with_deadline == 2
    expired: list[InferRequest] = []
    q.expire(200 * US, expired)
    assert {r.id for r in expired} == {"h2", "d1"} and not q


def test_clear_returns_everything_in_take_order() -> None:
    q = _queue("priority_levels: 2 default_priority_level: 2")
    _admit(q, _request("d", priority=2), _request("h", priority=1))
    assert [r.id for r in q.clear()] == ["h", "d"]
    assert not q and len(q) == 0 and q.with_deadline == 0


def test_take_merges_matching_requests_in_order_up_to_max_rows() -> None:
    q = _queue("priority_levels: 2 default_priority_level: 2")
    a, b, c = _request("a", priority=2), _request("b", priority=1), _request("c", priority=2)
    odd = _request("odd", priority=2)
    odd.merge_key = ("other",)
    gone = _request("gone", priority=2)
    _admit(q, a, gone, c, odd, b)
    gone.cancelled = True
    cancelled: list[InferRequest] = []
    batch, rows, cut, full = q.take(8, True, (2, 4), cancelled)
    # level 1 first; the cancelled one leaves on the way; "odd" cannot join and stays first
    assert [r.id for r in batch] == ["b", "a", "c"] and rows == 3 and cut == 2 and full
    assert cancelled == [gone] and _drain(q) == ["odd"]


def test_take_stops_at_max_rows_and_at_a_request_that_does_not_fit() -> None:
    q = _queue()
    big = _request("big")
    big.batch_size = 3
    _admit(q, _request("a"), _request("b"), big, _request("c"))
    batch, rows, _, full = q.take(4, True, (), [])
    assert [r.id for r in batch] == ["a", "b"] and rows == 2 and full  # 2 + 3 rows > 4
    batch, rows, _, full = q.take(4, True, (), [])
    assert [r.id for r in batch] == ["big", "c"] and rows == 4 and full
