"""Tasks waiting for handler capacity: FIFO per topic, bounded (in all and per topic), expiring by deadline.

Removal is lazy: a task leaving the queue (dispatched or expired) is only flagged, and skipped when it reaches
the head of its topic's line; the deadline heap is compacted when stale entries outnumber live ones.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Iterator

from dlhub.broker.tasks import TaskRecord


class PendingQueue:
    def __init__(self, *, max_tasks: int, max_per_topic: int | None = None) -> None:
        self.max_tasks = max_tasks
        self.max_per_topic = max_tasks if max_per_topic is None else max_per_topic
        self._lines: dict[str, deque[TaskRecord]] = {}
        self._live: dict[str, int] = {}
        self._deadlines: list[tuple[float, int, TaskRecord]] = []
        self._seq = itertools.count()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @property
    def full(self) -> bool:
        return self._count >= self.max_tasks

    def push(self, task: TaskRecord) -> bool:
        """Queue ``task`` behind others for its topic; False if the queue, or its topic's line, is full."""
        if self._count >= self.max_tasks:
            return False
        topic = task.topic
        if self._live.get(topic, 0) >= self.max_per_topic:
            return False
        line = self._lines.get(topic)
        if line is None:
            self._lines[topic] = line = deque()
            self._live[topic] = 0
        line.append(task)
        self._live[topic] += 1
        self._count += 1
        task.queued = True
        heapq.heappush(self._deadlines, (task.deadline, next(self._seq), task))
        return True

    def depths(self) -> dict[str, int]:
        """Tasks waiting per topic (topics with none left out)."""
        return {topic: live for topic, live in self._live.items() if live > 0}

    def topics(self) -> list[str]:
        """Topics with tasks waiting."""
        return list(self._lines)

    def peek(self, topic: str) -> TaskRecord | None:
        line = self._lines.get(topic)
        while line:
            task = line[0]
            if task.queued and task.topic == topic:
                return task
            line.popleft()
        return None

    def take(self, task: TaskRecord) -> None:
        """Remove ``task`` (the head returned by ``peek``, or any queued task) from the queue."""
        if not task.queued:
            return
        task.queued = False
        topic = task.topic
        self._count -= 1
        live = self._live[topic] - 1
        if live:
            self._live[topic] = live
            line = self._lines[topic]
            if line and line[0] is task:
                line.popleft()
        else:
            del self._live[topic]
            del self._lines[topic]
        if len(self._deadlines) > 2 * self._count + 1024:
            self._deadlines = [entry for entry in self._deadlines if entry[2].queued]
            heapq.heapify(self._deadlines)

    def expired(self, now: float) -> Iterator[TaskRecord]:
        """Remove and yield queued tasks whose deadline has passed."""
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            task = heapq.heappop(heap)[2]
            if task.queued:
                self.take(task)
                yield task

    def drain(self) -> list[TaskRecord]:
        """Remove and return every queued task."""
        tasks = [t for line in self._lines.values() for t in line if t.queued]
        for task in tasks:
            task.queued = False
        self._lines.clear()
        self._live.clear()
        self._deadlines.clear()
        self._count = 0
        return tasks
