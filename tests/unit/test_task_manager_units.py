"""The pieces of a Task Manager that need no process: served patterns as topics, the broker's topic table
with globs, the reconnect delay, and bundles (made, checked, unpacked)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from dlhub.broker.handlers import HandlerRecord
from dlhub.broker.routing import TopicTable
from dlhub.common.bundles import bundle_digest, install_bundle, make_bundle
from dlhub.common.bus import reconnect_delay_s
from dlhub.common.errors import PackageTampered, UnsafePackage
from dlhub.common.ids import serves_topics
from dlhub.common.package import ExtractLimits

LIMITS = ExtractLimits(max_extracted_bytes=1 << 20, max_files=100)


def handler(handler_id: str, topics: list[str]) -> HandlerRecord:
    return HandlerRecord(
        handler_id=handler_id, identity=handler_id.encode(), kind="worker", topics=topics, capacity=1,
        last_seen=0.0,
    )  # fmt: skip


def test_served_patterns_become_topics() -> None:
    assert serves_topics(["*", "alice/*", "bob/model", "bob/model@3", "*/resnet*"]) == [
        "servable/*",
        "servable/alice/*",
        "servable/bob/model@*",
        "servable/bob/model@3",
        "servable/*/resnet*",
    ]
    for bad in ["", "alice /x", "/etc"]:
        with pytest.raises(ValueError):
            serves_topics([bad])


def test_the_topic_table_routes_by_exact_prefix_and_glob_patterns() -> None:
    table = TopicTable()
    alice, resnets, everyone = (
        handler("alice", ["servable/alice/*"]),
        handler("resnets", ["servable/*/resnet@*"]),
        handler("everyone", ["servable/*"]),
    )
    for h in (alice, resnets, everyone):
        table.add(h)
    assert {h.handler_id for h in table.matching("servable/alice/resnet@2")} == {
        "alice",
        "resnets",
        "everyone",
    }
    assert {h.handler_id for h in table.matching("servable/bob/resnet@1")} == {"resnets", "everyone"}
    assert {h.handler_id for h in table.matching("servable/bob/other@1")} == {"everyone"}
    table.remove(everyone)
    table.remove(resnets)
    assert table.matching("servable/bob/resnet@1") == []
    assert table.choose("servable/bob/other@1") is None
    assert table.ever_served("servable/bob/resnet@1")  # glob patterns count as served before


def test_the_reconnect_delay_is_jittered_within_half_of_the_backoff() -> None:
    delays = [reconnect_delay_s(8.0) for _ in range(200)]
    assert all(4.0 <= d <= 8.0 for d in delays)
    assert len(set(delays)) > 100  # not one instant for every worker


def test_a_bundle_round_trips_and_a_changed_byte_is_refused(tmp_path: Path) -> None:
    version = tmp_path / "version"
    (version / "files").mkdir(parents=True)
    (version / "metadata.json").write_text("{}")
    (version / "files" / "model.py").write_text("x = 1\n")
    (version / "files" / "link.py").symlink_to("model.py")
    data = make_bundle(version)
    assert make_bundle(version) == data  # the same folder, the same bytes (and digest)
    digest = bundle_digest(data)
    cache = tmp_path / "cache"
    with pytest.raises(PackageTampered):
        install_bundle(data[:-1] + bytes([data[-1] ^ 1]), digest, cache, LIMITS)
    assert not (cache / digest).exists()
    installed = install_bundle(data, digest, cache, LIMITS)
    assert installed == cache / digest
    assert (installed / "files" / "model.py").read_text() == "x = 1\n"
    assert (installed / "files" / "link.py").is_symlink()
    assert install_bundle(data, digest, cache, LIMITS) == installed  # already there


def test_a_bundle_escaping_its_folder_is_refused_even_with_a_matching_digest(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("../escape.py")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    data = buffer.getvalue()
    with pytest.raises(UnsafePackage):
        install_bundle(data, bundle_digest(data), tmp_path / "cache", LIMITS)
    assert not (tmp_path / "escape.py").exists()
    assert list((tmp_path / "cache").iterdir()) == [tmp_path / "cache" / ".staging"]
    assert not any((tmp_path / "cache" / ".staging").iterdir())
