"""Placement without processes: which handlers a step's placement admits (site, devices, replicas), the
reason named when none does, the wire form, devices a worker finds or is told, and the publication checks."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from dlhub.broker.handlers import HandlerRecord
from dlhub.broker.placement import device_counts, meets, unmet_requirement
from dlhub.broker.routing import TopicTable
from dlhub.client.metadata import python_function_document
from dlhub.common.codec import Codec
from dlhub.common.errors import ValidationFailed
from dlhub.common.messages import DeviceNeed, Placement, Register, RouteStep, Submit
from dlhub.registry.metadata import validate_publication
from dlhub.registry.placement import placement_of
from dlhub.worker.devices import detect_devices, gpus_from_cuda_visible, offered_devices

TOPIC = "servable/alice/model@1"
GPU = (DeviceNeed(kind="gpu"),)


def handler(name: str, *, site: str = "", devices: tuple[str, ...] = (), capacity: int = 4) -> HandlerRecord:
    return HandlerRecord(
        handler_id=name, identity=name.encode(), kind="worker", topics=["servable/*"], capacity=capacity,
        last_seen=0.0, site=site, devices=list(devices), device_counts=device_counts(devices),
    )  # fmt: skip


def table_of(*handlers: HandlerRecord) -> TopicTable:
    table = TopicTable()
    for h in handlers:
        table.add(h)
    return table


def names(handlers: list[HandlerRecord]) -> set[str]:
    return {h.handler_id for h in handlers}


def test_devices_are_counted_by_kind() -> None:
    assert device_counts(["gpu:0", "gpu:1", "npu"]) == {"gpu": 2, "npu": 1}
    assert device_counts([]) == {}


def test_a_handler_meets_a_placement_by_site_and_device_count() -> None:
    a, b_gpu = handler("a", site="A"), handler("b", site="B", devices=("gpu:0",))
    assert meets(a, Placement()) and meets(b_gpu, Placement())
    assert meets(b_gpu, Placement(site="B")) and not meets(a, Placement(site="B"))
    assert meets(b_gpu, Placement(devices=GPU)) and not meets(a, Placement(devices=GPU))
    assert not meets(b_gpu, Placement(devices=(DeviceNeed(kind="gpu", count=2),)))
    assert not meets(b_gpu, Placement(site="A", devices=GPU))


def test_the_unmet_requirement_is_named() -> None:
    a, b_gpu = handler("a", site="A"), handler("b", site="B", devices=("gpu:0",))
    assert unmet_requirement([a], Placement(site="B")) == "no Task Manager at site 'B'"
    assert unmet_requirement([a], Placement(devices=GPU)) == "no Task Manager with 1 gpu device"
    two = Placement(site="B", devices=(DeviceNeed(kind="gpu", count=2),))
    assert unmet_requirement([a, b_gpu], two) == "no Task Manager at site 'B' with 2 gpu devices"
    table = table_of(a)
    assert table.unserved_reason(TOPIC, Placement(devices=GPU)) == (
        f"no Task Manager with 1 gpu device serves topic {TOPIC!r}"
    )
    assert (
        table.unserved_reason("builder/build", None) == "no registered handler serves topic 'builder/build'"
    )


def test_routing_chooses_only_among_eligible_handlers_and_caches_until_the_table_changes() -> None:
    a, b, gpu = handler("a", site="A"), handler("b", site="B"), handler("gpu", site="A", devices=("gpu:0",))
    table = table_of(a, b, gpu)
    pinned = Placement(site="B")
    assert {table.choose(TOPIC, pinned).handler_id for _ in range(10)} == {"b"}  # type: ignore[union-attr]
    assert {table.choose(TOPIC, Placement(devices=GPU)).handler_id for _ in range(10)} == {"gpu"}  # type: ignore[union-attr]
    assert names(table.candidates(TOPIC, None)) == {"a", "b", "gpu"}
    assert table.eligible(TOPIC, pinned) is table.eligible(
        TOPIC, Placement(site="B")
    )  # equal keys, one entry
    table.remove(b)
    assert table.eligible(TOPIC, pinned) == [] and table.choose(TOPIC, pinned) is None
    b_again = handler("b2", site="B")
    table.add(b_again)
    assert table.choose(TOPIC, pinned) is b_again


def test_a_full_eligible_handler_is_not_replaced_by_an_ineligible_one() -> None:
    gpu, cpu = handler("gpu", devices=("gpu:0",), capacity=1), handler("cpu", capacity=8)
    table = table_of(gpu, cpu)
    gpu.hold("t1", TOPIC)
    assert table.choose(TOPIC, Placement(devices=GPU)) is None  # waits for the gpu one
    gpu.release("t1")
    assert table.choose(TOPIC, Placement(devices=GPU)) is gpu


def test_replicas_spread_over_a_sticky_subset_of_the_eligible_handlers() -> None:
    one, two, three = handler("one"), handler("two"), handler("three")
    table = table_of(one, two, three)
    twice = Placement(replicas=2)
    chosen = {table.choose(TOPIC, twice).handler_id for _ in range(30)}  # type: ignore[union-attr]
    assert len(chosen) == 2
    # Another topic's replicas go first to the handler holding none.
    other = "servable/alice/other@1"
    assert (
        table.eligible(other, Placement(replicas=1))[0].handler_id == ({"one", "two", "three"} - chosen).pop()
    )
    # A newcomer does not take over a full set: the executors stay warm where they are.
    table.add(handler("four"))
    assert names(table.eligible(TOPIC, twice)) == chosen
    # One of the set leaves: the set is refilled with another eligible handler, the other member kept.
    [leaving] = [h for h in (one, two, three) if h.handler_id == sorted(chosen)[0]]
    table.remove(leaving)
    refilled = names(table.eligible(TOPIC, twice))
    assert len(refilled) == 2 and sorted(chosen)[1] in refilled and leaving.handler_id not in refilled


def test_replicas_apply_after_site_and_devices() -> None:
    handlers = [handler(f"b{i}", site="B") for i in range(3)] + [handler("a", site="A")]
    table = table_of(*handlers)
    assert len(table.eligible(TOPIC, Placement(site="B", replicas=2))) == 2
    assert names(table.eligible(TOPIC, Placement(site="A", replicas=2))) == {"a"}  # fewer than asked: all


def test_placement_and_devices_travel_on_the_bus_and_older_messages_still_decode() -> None:
    codec = Codec()
    placement = Placement(site="B", devices=(DeviceNeed(kind="gpu", count=2),), replicas=3)
    submit = Submit(task_id="t", route=[RouteStep(topic=TOPIC, placement=placement)])
    decoded = codec.decode(codec.encode(submit))
    assert isinstance(decoded, Submit) and decoded.route[0].placement == placement
    plain = codec.decode(codec.encode(Submit(task_id="t", route=[RouteStep(topic=TOPIC)])))
    assert isinstance(plain, Submit) and plain.route[0].placement is None
    register = Register(handler_id="h", kind="worker", topics=["servable/*"], capacity=1, devices=["gpu:0"])
    back = codec.decode(codec.encode(register))
    assert isinstance(back, Register) and back.devices == ["gpu:0"]
    assert hash(placement) == hash(
        Placement(site="B", devices=(DeviceNeed(kind="gpu", count=2),), replicas=3)
    )


def test_devices_come_from_the_configuration_else_from_cuda_visible_devices() -> None:
    assert offered_devices(["gpu:0", "gpu:1"]) == ["gpu:0", "gpu:1"]
    assert offered_devices([]) == []
    assert gpus_from_cuda_visible("0,1") == ["gpu:0", "gpu:1"]
    assert gpus_from_cuda_visible("") == [] and gpus_from_cuda_visible("-1") == []
    assert detect_devices({"CUDA_VISIBLE_DEVICES": "2"}) == ["gpu:2"]
    assert detect_devices({"CUDA_VISIBLE_DEVICES": ""}) == []


DOCUMENT: dict[str, Any] = python_function_document(
    name="model", module="m", function="f", files=["m.py"], title="T", authors=["Doe, Jane"]
)


def with_placement(block: Any) -> dict[str, Any]:
    document = copy.deepcopy(DOCUMENT)
    document["servable"]["placement"] = block
    return document


def test_a_placement_block_is_validated_and_becomes_the_route_steps_placement() -> None:
    block = {"site": "cluster-b", "devices": {"gpu": 1}, "replicas": 2}
    document = validate_publication(with_placement(block))
    assert placement_of(document) == Placement(site="cluster-b", devices=GPU, replicas=2)
    assert placement_of(DOCUMENT) is None


@pytest.mark.parametrize(
    ("block", "field"),
    [
        ({"site": ""}, "servable.placement.site"),
        ({"devices": {"GPU": 1}}, "servable.placement.devices"),
        ({"devices": {"gpu": 0}}, "servable.placement.devices.gpu"),
        ({"devices": {}}, "servable.placement.devices"),
        ({"replicas": 0}, "servable.placement.replicas"),
        ({"replicas": "2"}, "servable.placement.replicas"),
        ({"rack": "r1"}, "servable.placement"),
        ("cluster-b", "servable.placement"),
    ],
)
def test_a_bad_placement_block_is_refused_naming_the_field(block: Any, field: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        validate_publication(with_placement(block))
    assert caught.value.field == field, caught.value.message


def test_a_pipeline_has_no_placement_of_its_own() -> None:
    document = copy.deepcopy(DOCUMENT)
    document["dlhub"]["type"] = "pipeline"
    document["servable"] = {
        "type": "pipeline",
        "steps": [{"servable": "alice/model@1"}],
        "placement": {"site": "B"},
    }
    with pytest.raises(ValidationFailed) as caught:
        validate_publication(document)
    assert caught.value.field == "servable.placement"
