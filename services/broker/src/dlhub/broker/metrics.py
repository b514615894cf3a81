"""The broker's Prometheus gauges: queue depth and registered handlers per topic, tasks in flight, and the
durable results held for acknowledgement (the mailbox).

They are computed on the broker's timer (every ``metrics.broker_update_interval_s``), never per message, into
an immutable snapshot that the metrics HTTP thread reads whole: a scrape never sees a half-updated table.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from dlhub.broker.handlers import HandlerTable
from dlhub.broker.mailbox import Mailbox
from dlhub.broker.queue import PendingQueue


@dataclass(frozen=True)
class Snapshot:
    queue_depth: dict[str, int] = field(default_factory=dict)
    handlers: dict[str, int] = field(default_factory=dict)
    capacity: dict[str, int] = field(default_factory=dict)
    handlers_by_kind: dict[str, int] = field(default_factory=dict)
    inflight: int = 0
    tasks: int = 0
    mailbox_results: int = 0
    mailbox_bytes: int = 0


class BrokerCollector(Collector):
    def __init__(self) -> None:
        self.snapshot = Snapshot()

    def update(self, handlers: HandlerTable, queue: PendingQueue, tasks: int, mailbox: Mailbox) -> None:
        by_topic: dict[str, int] = {}
        capacity: dict[str, int] = {}
        kinds: dict[str, int] = {}
        for handler in handlers:
            kinds[handler.kind] = kinds.get(handler.kind, 0) + 1
            for topic in handler.topics:
                by_topic[topic] = by_topic.get(topic, 0) + 1
                capacity[topic] = capacity.get(topic, 0) + handler.capacity
        self.snapshot = Snapshot(
            queue_depth=queue.depths(),
            handlers=by_topic,
            capacity=capacity,
            handlers_by_kind=kinds,
            inflight=handlers.total_inflight(),
            tasks=tasks,
            mailbox_results=len(mailbox),
            mailbox_bytes=mailbox.bytes,
        )

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snap = self.snapshot
        depth = GaugeMetricFamily("dlhub_broker_queue_depth", "Tasks queued at the broker", labels=["topic"])
        for topic, count in snap.queue_depth.items():
            depth.add_metric([topic], count)
        yield depth
        handlers = GaugeMetricFamily(
            "dlhub_broker_handlers", "Registered handlers subscribed to a topic (pattern)", labels=["topic"]
        )
        for topic, count in snap.handlers.items():
            handlers.add_metric([topic], count)
        yield handlers
        capacity = GaugeMetricFamily(
            "dlhub_broker_handler_capacity", "Tasks the handlers of a topic take at once", labels=["topic"]
        )
        for topic, count in snap.capacity.items():
            capacity.add_metric([topic], count)
        yield capacity
        kinds = GaugeMetricFamily(
            "dlhub_broker_handlers_by_kind", "Registered handlers by kind", labels=["kind"]
        )
        for kind, count in snap.handlers_by_kind.items():
            kinds.add_metric([kind], count)
        yield kinds
        yield GaugeMetricFamily(
            "dlhub_broker_inflight_tasks", "Tasks dispatched to handlers", value=snap.inflight
        )
        yield GaugeMetricFamily(
            "dlhub_broker_tasks", "Tasks the broker holds (queued or in flight)", value=snap.tasks
        )
        yield GaugeMetricFamily(
            "dlhub_broker_mailbox_results",
            "Final results of durable tasks held until their client acknowledges them",
            value=snap.mailbox_results,
        )
        yield GaugeMetricFamily(
            "dlhub_broker_mailbox_bytes", "Encoded size of the results held", value=snap.mailbox_bytes
        )
