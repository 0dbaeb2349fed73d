"""Scheduling policies: where a task queues and which batch an executor runs next.

Each policy is a queue structure with the same small interface (vLLM-style
request queues): :meth:`add` places a task, :meth:`pop_batch` returns the
next :class:`Batch` for an executor (or None), :meth:`batch_done` tells it an
executor is free. Policies are plain single-threaded objects; the runtime
(or the simulator) calls them under its own lock. Choose by name with
:func:`create_scheduler`.

- ``fcfs``: one queue in arrival order, any executor takes the head (Samba-CoE).
- ``round-robin``: tasks dealt to executors in turn, each runs its own queue in
  order (Samba-CoE Parallel).
- ``coserve``: CoServe's dependency-aware scheduler: *assign* to the executor
  that minimises the makespan (K*n+B execution plus load latency unless the
  expert is resident or already queued there; ties by smallest added time),
  *arrange* behind queued tasks for the same expert, *split* groups into
  batches of at most min(max batch, what fits in an executor's working memory, which
  is reserved apart from the expert budget; CoServe used the memory left beside the experts).
- ``arrange``: coserve's arranging and splitting without its assigning (new
  groups go to executors in turn); the ablation step between the two.
- ``edgecoe``: coserve, but assign by earliest finish time (weighs a switch on
  an idle executor against waiting for one that holds the expert), and a bound
  on queueing delay: a group whose oldest task waited longer runs next.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from edgecoe.sched.cost import CostModel
from edgecoe.sched.types import Batch, ExecutorInfo, Task


class SchedulingPolicy(Protocol):
    name: str

    def add(self, task: Task, now_ms: float) -> int:
        """Queue a task; returns the executor it was placed on (-1: shared queue)."""
        ...

    def pop_batch(self, executor: int, now_ms: float) -> Batch | None:
        """The next batch for ``executor``, removed from the queue; None if it has nothing."""
        ...

    def batch_done(self, executor: int, now_ms: float) -> None:
        """``executor`` finished its batch."""
        ...

    def __len__(self) -> int:
        """Tasks queued (not yet in a batch)."""
        ...

    def queued_experts(self) -> set[str]:
        """Experts some queued task needs (never to be evicted for a prefetch)."""
        ...


def _take_run(queue: deque[Task], limit: int) -> list[Task]:
    """Head task plus the tasks right behind it for the same expert, up to ``limit``."""
    first = queue.popleft()
    tasks = [first]
    while queue and len(tasks) < limit and queue[0].expert == first.expert:
        tasks.append(queue.popleft())
    return tasks


class FcfsQueue:
    """One arrival-order queue shared by every executor (Samba-CoE)."""

    name = "fcfs"

    def __init__(self, executors: list[ExecutorInfo], cost: CostModel) -> None:
        self.executors = executors
        self.cost = cost
        self._queue: deque[Task] = deque()
        self._counts: dict[str, int] = {}

    def add(self, task: Task, now_ms: float) -> int:
        self._queue.append(task)
        self._counts[task.expert] = self._counts.get(task.expert, 0) + 1
        return -1

    def pop_batch(self, executor: int, now_ms: float) -> Batch | None:
        if not self._queue:
            return None
        info = self.executors[executor]
        limit = self.cost.max_batch(self._queue[0].expert, info.kind)
        tasks = _take_run(self._queue, limit)
        self._counts[tasks[0].expert] -= len(tasks)
        return Batch(executor, tasks[0].expert, tasks)

    def batch_done(self, executor: int, now_ms: float) -> None:
        pass

    def __len__(self) -> int:
        return len(self._queue)

    def queued_experts(self) -> set[str]:
        return {e for e, n in self._counts.items() if n > 0}


class RoundRobinQueue:
    """Tasks dealt to executors in turn; each executor serves its own queue in order."""

    name = "round-robin"

    def __init__(self, executors: list[ExecutorInfo], cost: CostModel) -> None:
        self.executors = executors
        self.cost = cost
        self._queues: list[deque[Task]] = [deque() for _ in executors]
        self._next = 0
        self._counts: dict[str, int] = {}

    def add(self, task: Task, now_ms: float) -> int:
        executor = self._next
        self._next = (self._next + 1) % len(self._queues)
        self._queues[executor].append(task)
        self._counts[task.expert] = self._counts.get(task.expert, 0) + 1
        return executor

    def pop_batch(self, executor: int, now_ms: float) -> Batch | None:
        queue = self._queues[executor]
        if not queue:
            return None
        limit = self.cost.max_batch(queue[0].expert, self.executors[executor].kind)
        tasks = _take_run(queue, limit)
        self._counts[tasks[0].expert] -= len(tasks)
        return Batch(executor, tasks[0].expert, tasks)

    def batch_done(self, executor: int, now_ms: float) -> None:
        pass

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues)

    def queued_experts(self) -> set[str]:
        return {e for e, n in self._counts.items() if n > 0}


@dataclass(slots=True)
class _Group:
    """Queued tasks of one expert on one executor; ``est_ms`` is their estimated cost."""

    expert: str
    tasks: deque[Task] = field(default_factory=deque)
    est_ms: float = 0.0


class CoserveQueue:
    """CoServe's assign / arrange / split (docs/background.md). See the module docstring."""

    name = "coserve"

    def __init__(
        self, executors: list[ExecutorInfo], cost: CostModel, *,
        working_bytes: Callable[[str], int] | None = None, max_delay_ms: float | None = None,
    ) -> None:
        self.executors = executors
        self.cost = cost
        # processor -> memory one executor's batch may use there; reserved apart from the
        # expert budget, so how full the cache is never changes batch sizes (None: unlimited)
        self.working_bytes = working_bytes or (lambda processor_id: 1 << 62)
        self.max_delay_ms = max_delay_ms
        self._groups: list[OrderedDict[str, _Group]] = [OrderedDict() for _ in executors]  # executor -> expert -> group
        self._backlog_ms = [0.0] * len(executors)  # executor -> sum of its groups' est_ms
        self._busy_until_ms = [0.0] * len(executors)  # executor -> estimated end of its running batch
        self._num_tasks = 0
        self._counts: dict[str, int] = {}  # expert -> queued tasks over all executors

    # -- estimates ---------------------------------------------------------------
    def _switch_ms(self, expert: str, executor: int) -> float:
        info = self.executors[executor]
        if expert in self._groups[executor] or self.cost.is_resident(expert, info.processor_id):
            return 0.0
        return self.cost.load_ms(expert, info.kind)

    def _added_ms(self, expert: str, executor: int) -> float:
        """Time one more task for ``expert`` adds to ``executor``'s queue."""
        kind = self.executors[executor].kind
        if expert in self._groups[executor]:
            return self.cost.item_ms(expert, kind)
        return self.cost.exec_ms(expert, kind, 1) + self._switch_ms(expert, executor)

    def _queue_ms(self, executor: int, now_ms: float) -> float:
        return max(0.0, self._busy_until_ms[executor] - now_ms) + self._backlog_ms[executor]

    # -- assign --------------------------------------------------------------------
    def choose_executor(self, expert: str, now_ms: float) -> int:
        """Minimise the resulting makespan; ties go to the smallest added time."""
        queue = [self._queue_ms(e, now_ms) for e in range(len(self.executors))]
        best, best_key = 0, (float("inf"), float("inf"))
        for e in range(len(self.executors)):
            added = self._added_ms(expert, e)
            others = max((q for i, q in enumerate(queue) if i != e), default=0.0)
            key = (max(queue[e] + added, others), added)
            if key < best_key:
                best, best_key = e, key
        return best

    def add(self, task: Task, now_ms: float) -> int:
        executor = self.choose_executor(task.expert, now_ms)
        self.place(task, executor)
        return executor

    def place(self, task: Task, executor: int) -> None:
        """Queue ``task`` on ``executor`` without assigning (arrange still applies)."""
        added = self._added_ms(task.expert, executor)
        groups = self._groups[executor]
        group = groups.get(task.expert)
        if group is None:  # arrange: a new expert starts a group at the back
            group = groups[task.expert] = _Group(task.expert)
        group.tasks.append(task)  # arrange: right behind queued tasks for the same expert
        group.est_ms += added
        self._backlog_ms[executor] += added
        self._num_tasks += 1
        self._counts[task.expert] = self._counts.get(task.expert, 0) + 1

    # -- split -----------------------------------------------------------------------
    def _starving_group(self, executor: int, now_ms: float) -> _Group | None:
        """The group holding the oldest task, if that task waited past the delay bound."""
        if self.max_delay_ms is None:
            return None
        oldest = min(self._groups[executor].values(), key=lambda g: (g.tasks[0].enqueued_ms, g.tasks[0].seq))
        return oldest if now_ms - oldest.tasks[0].enqueued_ms > self.max_delay_ms else None

    def _pick_group(self, executor: int, now_ms: float) -> _Group:
        return self._starving_group(executor, now_ms) or next(iter(self._groups[executor].values()))

    def batch_limit(self, expert: str, executor: int) -> int:
        """min(profiled max batch, items that fit in the executor's working memory), at least 1.

        NOTE: CoServe splits by the memory left beside the resident experts; that
        made a full cache run batches of one (an all-resident budget ran every batch at
        size 1). Batches get a working reservation of their own instead.
        """
        info = self.executors[executor]
        limit = self.cost.max_batch(expert, info.kind)
        per_item = self.cost.item_bytes(expert, info.kind)
        if per_item > 0:
            limit = min(limit, self.working_bytes(info.processor_id) // per_item)
        return max(1, limit)

    def pop_batch(self, executor: int, now_ms: float) -> Batch | None:
        groups = self._groups[executor]
        if not groups:
            return None
        group = self._pick_group(executor, now_ms)
        info = self.executors[executor]
        needs_switch = not self.cost.is_resident(group.expert, info.processor_id)
        limit = self.batch_limit(group.expert, executor)
        tasks = [group.tasks.popleft() for _ in range(min(limit, len(group.tasks)))]
        estimate = self.cost.exec_ms(group.expert, info.kind, len(tasks))
        if needs_switch:
            estimate += self.cost.load_ms(group.expert, info.kind)
        if group.tasks:
            remaining = self.cost.exec_ms(group.expert, info.kind, len(group.tasks))
        else:
            remaining = 0.0
            del groups[group.expert]
        self._backlog_ms[executor] += remaining - group.est_ms
        group.est_ms = remaining
        self._busy_until_ms[executor] = now_ms + estimate
        self._num_tasks -= len(tasks)
        self._counts[group.expert] -= len(tasks)
        return Batch(executor, group.expert, tasks, estimated_ms=estimate, needs_switch=needs_switch)

    def batch_done(self, executor: int, now_ms: float) -> None:
        self._busy_until_ms[executor] = now_ms

    def __len__(self) -> int:
        return self._num_tasks

    def queued_experts(self) -> set[str]:
        return {e for e, n in self._counts.items() if n > 0}

    def queued_on(self, executor: int) -> list[tuple[str, int]]:
        """(expert, queued tasks) per group on an executor, in run order (tests, traces)."""
        return [(g.expert, len(g.tasks)) for g in self._groups[executor].values()]


def _head_order(group: _Group) -> tuple[float, int]:
    head = group.tasks[0]
    return head.enqueued_ms, head.seq


class EdgecoeQueue(CoserveQueue):
    """CoServe plus earliest-finish-time assignment, switch-aware group order and a
    queueing-delay bound.

    Group order: an executor runs a group whose expert is already resident (no
    switch), the largest such; if none is resident, the largest group, so each
    load serves as many tasks as possible. CoServe instead runs groups in
    arrival order.

    Delay bound, in two tiers. Groups whose oldest task waited past both the
    bound and twice the mean wait of all groups' oldest tasks are starving:
    they go first, in the order above among themselves; a group whose oldest
    task waited past ``HARD_FACTOR`` times the bound goes first outright.
    NOTE: a single absolute tier (oldest overdue group first) turned sustained
    overload into arrival-order scheduling: once every group is overdue the
    order is FCFS, switches multiply, the queue grows further. On pcb at
    6,000 requests it cost 25 % throughput and 4x the switches (684 vs ~160);
    "overdue groups first by size" still forced a load for every small
    overdue group (463 switches).
    """

    name = "edgecoe"
    HARD_FACTOR = 4.0

    def _pick_group(self, executor: int, now_ms: float) -> _Group:
        groups = self._groups[executor]
        resident = self.cost.residents(self.executors[executor].processor_id)

        def key(group: _Group) -> tuple[bool, int, int]:  # resident first, then most tasks, then oldest
            return group.expert in resident, len(group.tasks), -group.tasks[0].seq

        # NOTE: one pass finds the best group, the oldest head and the heads' total wait: this
        # runs for every batch over every queued group, so it is most of a decision's cost.
        best = oldest = None
        best_key: tuple[bool, int, int] = (False, 0, 0)
        oldest_order = (float("inf"), 0)
        enqueued_sum = 0.0
        for group in groups.values():
            head = group.tasks[0]
            order = (head.enqueued_ms, head.seq)
            if order < oldest_order:
                oldest, oldest_order = group, order
            enqueued_sum += head.enqueued_ms
            group_key = (group.expert in resident, len(group.tasks), -head.seq)
            if best is None or group_key > best_key:
                best, best_key = group, group_key
        assert best is not None and oldest is not None  # an executor with nothing queued is not asked
        bound = self.max_delay_ms
        if bound is not None:
            waited = now_ms - oldest_order[0]
            if waited > self.HARD_FACTOR * bound:
                return oldest
            if waited > bound:
                # Starving = waited past the bound *and* twice the typical wait:
                # under uniform overload every head is past an absolute bound,
                # and serving them by age alone is arrival order again.
                mean_wait = now_ms - enqueued_sum / len(groups)
                limit = max(bound, 2.0 * mean_wait)
                starving = [g for g in groups.values() if now_ms - g.tasks[0].enqueued_ms > limit]
                if starving:
                    return max(starving, key=key)
        return best

    def _finish_ms(self, expert: str, executor: int, now_ms: float, added_ms: float) -> float:
        """When a new task for ``expert`` would finish if placed on ``executor`` (``added_ms``: what it adds)."""
        start = max(0.0, self._busy_until_ms[executor] - now_ms)
        groups = self._groups[executor]
        if expert not in groups:
            return start + self._backlog_ms[executor] + added_ms
        through = 0.0
        for group in groups.values():  # groups ahead of it, then its own
            through += group.est_ms
            if group.expert == expert:
                break
        return start + through + self.cost.item_ms(expert, self.executors[executor].kind)

    def choose_executor(self, expert: str, now_ms: float) -> int:
        best, best_key = 0, (float("inf"), float("inf"))
        for e in range(len(self.executors)):
            added = self._added_ms(expert, e)
            key = (self._finish_ms(expert, e, now_ms, added), added)
            if key < best_key:
                best, best_key = e, key
        return best


class ArrangeQueue(CoserveQueue):
    """Arranging without assigning (the ablation step between them): a task joins
    its expert's queued group wherever that is, else executors take new groups in turn."""

    name = "arrange"

    def __init__(self, executors: list[ExecutorInfo], cost: CostModel, **kwargs: object) -> None:
        super().__init__(executors, cost, **kwargs)  # type: ignore[arg-type]
        self._next = 0

    def choose_executor(self, expert: str, now_ms: float) -> int:
        for executor, groups in enumerate(self._groups):
            if expert in groups:
                return executor
        executor = self._next
        self._next = (self._next + 1) % len(self.executors)
        return executor


SchedulerFactory = Callable[..., SchedulingPolicy]

_REGISTRY: dict[str, SchedulerFactory] = {
    "fcfs": lambda executors, cost, **_: FcfsQueue(executors, cost),
    "round-robin": lambda executors, cost, **_: RoundRobinQueue(executors, cost),
    "coserve": lambda executors, cost, **kw: CoserveQueue(executors, cost, working_bytes=kw.get("working_bytes")),
    "arrange": lambda executors, cost, **kw: ArrangeQueue(executors, cost, working_bytes=kw.get("working_bytes")),
    "edgecoe": lambda executors, cost, **kw: EdgecoeQueue(
        executors, cost, working_bytes=kw.get("working_bytes"), max_delay_ms=kw.get("max_delay_ms")),
}

SCHEDULERS = tuple(_REGISTRY)


def create_scheduler(name: str, executors: list[ExecutorInfo], cost: CostModel, **context: object) -> SchedulingPolicy:
    """Build a scheduling policy by name.

    Args:
        context: ``working_bytes`` (processor_id -> memory one executor's batch may
            use), ``max_delay_ms`` (edgecoe's starvation bound).

    Raises:
        ValueError: unknown name; the message lists the valid ones.
    """
    factory = _REGISTRY.get(name)
    if factory is None:
        raise ValueError(f"unknown scheduler {name!r}; valid: {', '.join(SCHEDULERS)}")
    if not executors:
        raise ValueError("a scheduler needs at least one executor")
    return factory(executors, cost, **context)
