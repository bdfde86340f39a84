"""A model's request queue and its timeout policy, apart from the batcher (Triton's PriorityQueue).

Requests wait in one queue per priority level (level 1 first; without priority
levels, one queue), each with its policy: ``max_queue_size`` (a full level
refuses at once), a default timeout with REJECT (the request fails, never
computed) or DELAY (it moves behind every request that has not timed out), and
``allow_timeout_override`` (a request's own, shorter timeout wins). A request
taken while a batch forms can be put back in its place; a cancelled one leaves.

Not thread-safe on purpose: the scheduler calls it with its own lock held, so
the queue and the batcher's wake-up state change together.
"""

from __future__ import annotations

import collections

from .plan import BatchingPlan, QueuePolicy
from .request import InferRequest

__all__ = ["DELAYED", "PriorityQueue"]

DELAYED = -1  # InferRequest.level of a request moved behind the others after its timeout (DELAY)


class PriorityQueue:
    """The queued requests of one model version, in the order batches take them."""

    __slots__ = ("_default_level", "_delayed", "_levels", "_order", "_policies", "_with_deadline")

    def __init__(self, batching: BatchingPlan) -> None:
        self._policies: tuple[QueuePolicy, ...] = batching.policies or (QueuePolicy(),)
        # index 0 is unused when there are priority levels (level 1 is the highest)
        self._levels: list[collections.deque[InferRequest]] = [collections.deque() for _ in self._policies]
        self._default_level = batching.default_level if len(self._policies) > 1 else 0
        self._delayed: collections.deque[InferRequest] = collections.deque()
        self._with_deadline = 0  # queued requests that can expire; 0 skips the expiry scan
        # take order, fixed once (the deques are never replaced): level 1 first; level 0 is the one queue
        # without priority levels and after the others with them; delayed requests last
        self._order = (*self._levels[1:], self._levels[0], self._delayed) if len(self._levels) > 1 else (
            self._levels[0], self._delayed)

    # ---- admission -------------------------------------------------------------

    def assign(self, request: InferRequest) -> QueuePolicy:
        """Choose the request's level and stamp its queue deadline; returns that level's policy.

        Triton: priority 0 or beyond priority_levels means the default level. The policy's default
        timeout applies, or the request's own when the policy allows an override and it is shorter;
        a deadline the request already has (the client's gRPC deadline) is kept when it is earlier.
        """
        priority = request.priority
        level = priority if 0 < priority < len(self._levels) else self._default_level
        policy = self._policies[level]
        request.level = level
        timeout_us = policy.default_timeout_us
        if request.timeout_us and policy.allow_override and (not timeout_us or request.timeout_us < timeout_us):
            timeout_us = request.timeout_us
        if timeout_us:
            expiry = request.arrival_ns + timeout_us * 1000
            if not request.deadline_ns or expiry < request.deadline_ns:
                request.deadline_ns = expiry
                request.timeout_us = timeout_us
        return policy

    def push(self, request: InferRequest) -> int:
        """Queue an assigned request; returns how many were waiting at its level before it, or -1 when
        the level is at its max_queue_size (the request is not queued)."""
        items = self._levels[request.level]
        waiting = len(items)
        limit = self._policies[request.level].max_size
        if limit and waiting >= limit:
            return -1
        items.append(request)
        if request.deadline_ns:
            self._with_deadline += 1
        return waiting

    def max_size(self, request: InferRequest) -> int:
        """The max_queue_size of an assigned request's level (0: unbounded)."""
        return self._policies[request.level].max_size

    # ---- ordered take ------------------------------------------------------------

    def take(self, max_rows: int, merge: bool, preferred: tuple[int, ...],
             cancelled: list[InferRequest]) -> tuple[list[InferRequest], int, int, bool]:
        """Take the next batch in order (priority, then arrival; delayed requests last).

        Requests join while their ``merge_key`` matches the first one's and the rows fit ``max_rows``
        (``merge`` False: one request alone); cancelled requests met on the way leave into ``cancelled``.
        Returns (batch, rows, cut, full): ``cut`` is the length of the longest prefix whose rows are a
        preferred size (0: none), ``full`` says nothing more can join (the next request does not fit).
        """
        batch: list[InferRequest] = []
        rows = 0
        cut = 0
        for queue in self._order:
            while queue:
                head = queue[0]
                if batch and not head.cancelled and (
                        head.merge_key != batch[0].merge_key or rows + head.batch_size > max_rows):
                    return batch, rows, cut, True
                queue.popleft()
                if head.deadline_ns:
                    self._with_deadline -= 1
                if head.cancelled:
                    cancelled.append(head)
                    continue
                batch.append(head)
                rows += head.batch_size
                if not merge:
                    return batch, rows, 0, True
                if rows in preferred:
                    cut = len(batch)
                if rows >= max_rows:
                    return batch, rows, cut, True
        return batch, rows, cut, False

    def requeue(self, requests: list[InferRequest]) -> None:
        """Put back requests taken while forming a batch, in their order and at their level."""
        for r in reversed(requests):
            queue = self._delayed if r.level == DELAYED else self._levels[r.level]
            queue.appendleft(r)
            if r.deadline_ns:
                self._with_deadline += 1

    # ---- leaving early ---------------------------------------------------------------

    def remove(self, request: InferRequest) -> bool:
        """Take a cancelled request out; False when it is not queued (running or done)."""
        if not DELAYED <= request.level < len(self._levels):
            return False
        queue = self._delayed if request.level == DELAYED else self._levels[request.level]
        try:
            queue.remove(request)
        except ValueError:
            return False
        if request.deadline_ns:
            self._with_deadline -= 1
        return True

    @property
    def with_deadline(self) -> int:
        """Queued requests that can still time out."""
        return self._with_deadline

    def expire(self, now: int, expired: list[InferRequest]) -> None:
        """Take out the requests whose deadline has passed: REJECT adds them to ``expired``, DELAY moves them
        behind the others (a request that timed out on its gRPC deadline alone is always rejected)."""
        if not self._with_deadline:
            return
        for index, items in enumerate(self._levels):
            if not items or not any(r.deadline_ns and r.deadline_ns <= now for r in items):
                continue
            delay = self._policies[index].delay_on_timeout
            keep: collections.deque[InferRequest] = collections.deque()
            for r in items:
                if r.deadline_ns and r.deadline_ns <= now:
                    self._with_deadline -= 1
                    if delay and r.timeout_us:
                        r.deadline_ns = 0
                        r.level = DELAYED
                        self._delayed.append(r)
                    else:
                        expired.append(r)
                else:
                    keep.append(r)
            items.clear()
            items.extend(keep)

    def clear(self) -> list[InferRequest]:
        """Everything still queued, in take order; the queue is empty afterwards."""
        left = [r for queue in self._order for r in queue]
        for queue in self._levels:
            queue.clear()
        self._delayed.clear()
        self._with_deadline = 0
        return left

    def __len__(self) -> int:
        return sum(len(q) for q in self._levels) + len(self._delayed)

    def __bool__(self) -> bool:
        return any(self._levels) or bool(self._delayed)
