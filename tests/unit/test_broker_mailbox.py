"""The broker's mailbox of durable results: held per client until acknowledged, bounded by count, bytes and
age (oldest dropped first)."""

from __future__ import annotations

from dlhub.broker.handlers import HandlerTable
from dlhub.broker.mailbox import Mailbox
from dlhub.broker.metrics import BrokerCollector
from dlhub.broker.queue import PendingQueue


def test_results_are_held_per_client_until_acknowledged() -> None:
    box = Mailbox(max_results=10, max_bytes=1000, ttl_s=60)
    assert box.put(b"reg-a", "t1", b"r1", now=0.0) == []
    assert box.put(b"reg-b", "t2", b"r2", now=0.0) == []
    assert box.put(b"reg-a", "t3", b"r3", now=1.0) == []
    assert box.held_for(b"reg-a") == [b"r1", b"r3"] and box.held_for(b"reg-b") == [b"r2"]
    assert "t1" in box and len(box) == 3 and box.bytes == 6
    assert box.ack(["t1", "unknown", "t1"]) == 1
    assert box.held_for(b"reg-a") == [b"r3"] and "t1" not in box and box.bytes == 4
    assert box.held_for(b"nobody") == []


def test_a_result_stored_again_replaces_the_first() -> None:
    box = Mailbox(max_results=10, max_bytes=1000, ttl_s=60)
    box.put(b"reg", "t1", b"first", now=0.0)
    box.put(b"reg", "t1", b"second!", now=1.0)
    assert box.held_for(b"reg") == [b"second!"] and len(box) == 1 and box.bytes == 7


def test_count_and_byte_bounds_drop_the_oldest() -> None:
    box = Mailbox(max_results=2, max_bytes=10, ttl_s=60)
    box.put(b"reg", "t1", b"aaaa", now=0.0)
    box.put(b"reg", "t2", b"bbbb", now=0.0)
    assert box.put(b"reg", "t3", b"cc", now=0.0) == ["t1"]  # three results: one too many
    assert box.put(b"reg", "t4", b"dddddddd", now=0.0) == ["t2"]  # 3 results, 14 bytes: one drop fixes both
    assert box.held_for(b"reg") == [b"cc", b"dddddddd"] and box.bytes == 10
    assert box.put(b"reg", "t6", b"e", now=0.0) == ["t3"]
    # One result larger than the byte bound is still kept: the newest result is never dropped by its own put.
    assert box.put(b"reg", "t5", b"x" * 20, now=0.0) == ["t4", "t6"]
    assert box.held_for(b"reg") == [b"x" * 20]


def test_results_older_than_the_ttl_expire() -> None:
    box = Mailbox(max_results=10, max_bytes=1000, ttl_s=5)
    box.put(b"reg", "t1", b"1", now=0.0)
    box.put(b"reg", "t2", b"2", now=3.0)
    assert box.expire(now=4.9) == []
    assert box.expire(now=5.0) == ["t1"]
    assert box.expire(now=7.9) == [] and box.expire(now=8.0) == ["t2"]
    assert len(box) == 0 and box.bytes == 0


def test_the_metrics_collector_reports_the_results_held_and_their_bytes() -> None:
    box = Mailbox(max_results=10, max_bytes=1000, ttl_s=60)
    box.put(b"reg", "t1", b"abc", now=0.0)
    box.put(b"reg", "t2", b"defgh", now=0.0)
    collector = BrokerCollector()
    collector.update(HandlerTable(), PendingQueue(max_tasks=10), 0, box)
    box.ack(["t1"])  # a snapshot: later changes show at the next update
    values = {f.name: f.samples[0].value for f in collector.collect() if f.samples}
    assert values["dlhub_broker_mailbox_results"] == 2 and values["dlhub_broker_mailbox_bytes"] == 8
    collector.update(HandlerTable(), PendingQueue(max_tasks=10), 0, box)
    values = {f.name: f.samples[0].value for f in collector.collect() if f.samples}
    assert values["dlhub_broker_mailbox_results"] == 1 and values["dlhub_broker_mailbox_bytes"] == 5
