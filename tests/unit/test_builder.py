"""Builder: safe extraction of hostile packages, digests, immutable versions, and the service over the bus."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import stat
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from dlhub.builder.build import BuildLimits, build_version, compute_digest, sweep_staging
from dlhub.builder.service import BuilderService
from dlhub.common.bundles import bundle_digest, install_bundle
from dlhub.common.codec import Codec
from dlhub.common.errors import (
    BuildFailed,
    Conflict,
    DLHubError,
    InvalidMessage,
    PayloadTooLarge,
    UnsafePackage,
    ValidationFailed,
)
from dlhub.common.ids import BUILDER_TOPIC
from dlhub.common.messages import Dispatch
from dlhub.common.package import ExtractLimits, extract_package
from dlhub.common.payloads import BuildOutcome, BuildRequest, decode_payload
from dlhub.common.servable_store import (
    FILES_DIRNAME,
    METADATA_FILENAME,
    build_record_path,
    staging_dir,
    version_dir,
)

MiB = 1024 * 1024
LIMITS = BuildLimits(max_package_bytes=8 * MiB, max_extracted_bytes=4 * MiB, max_files=50)
EXTRACT = ExtractLimits(max_extracted_bytes=4 * MiB, max_files=50)
METADATA: dict[str, Any] = {
    "dlhub": {
        "name": "iris_rf",
        "files": {"model": "model.pkl", "other": ["src/a.py", "src/b.py"]},
        "dependencies": {"python": {"scikit-learn": "1.4"}},
    },
    "datacite": {"titles": [{"title": "Iris RF"}]},
}
GOOD_FILES = {"model.pkl": b"pickled-model", "src/a.py": b"print('a')\n", "src/b.py": b"print('b')\n"}


# --- archive builders ----------------------------------------------------------------------------------


def tar_member(name: str, data: bytes = b"", *, type_: bytes = tarfile.REGTYPE, link: str = "") -> Any:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.linkname = link
    info.mode = 0o755 if type_ == tarfile.DIRTYPE else 0o644
    info.mtime = 1_700_000_000
    if type_ == tarfile.REGTYPE:
        info.size = len(data)
        return info, data
    return info, None


def make_tar(members: list[Any], *, compression: str = "gz") -> bytes:
    buffer = io.BytesIO()
    mode = f"w:{compression}" if compression else "w"
    with tarfile.open(fileobj=buffer, mode=mode) as tar:  # type: ignore[call-overload]
        for info, data in members:
            tar.addfile(info, None if data is None else io.BytesIO(data))
    return buffer.getvalue()


def files_tar(files: dict[str, bytes], *, compression: str = "gz", mtime: int = 1_700_000_000) -> bytes:
    members = []
    for name, data in files.items():
        info, content = tar_member(name, data)
        info.mtime = mtime
        members.append((info, content))
    return make_tar(members, compression=compression)


def zip_entry(
    name: str, data: bytes = b"", *, mode: int = stat.S_IFREG | 0o644
) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
    info.external_attr = mode << 16
    info.create_system = 3
    info.compress_type = zipfile.ZIP_DEFLATED
    return info, data


def make_zip(entries: list[tuple[zipfile.ZipInfo, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for info, data in entries:
            zf.writestr(info, data)
    return buffer.getvalue()


def files_zip(files: dict[str, bytes]) -> bytes:
    return make_zip([zip_entry(name, data) for name, data in files.items()])


# --- fixtures ------------------------------------------------------------------------------------------


def snapshot(base: Path, exclude: Path) -> set[str]:
    """Every path under ``base`` (links not followed) except those inside ``exclude``."""
    found: set[str] = set()
    for folder, dirnames, filenames in os.walk(base):
        for name in [*dirnames, *filenames]:
            path = Path(folder) / name
            if path == exclude or exclude in path.parents:
                continue
            found.add(str(path.relative_to(base)))
    return found


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    """A servable root two levels down, so that escapes of any depth land in a watched folder."""
    servables = tmp_path / "data" / "servables"
    servables.mkdir(parents=True)
    (tmp_path / "data" / "neighbour.txt").write_text("untouched")
    before = snapshot(tmp_path, servables)
    yield servables
    assert snapshot(tmp_path, servables) == before, "something was written outside the servable root"
    assert (tmp_path / "data" / "neighbour.txt").read_text() == "untouched"


def request(package: bytes, fmt: str = "tar", **changes: Any) -> BuildRequest:
    fields: dict[str, Any] = {
        "owner": "alice",
        "name": "iris_rf",
        "version": 1,
        "metadata": METADATA,
        "package": package,
        "package_format": fmt,
    }
    fields.update(changes)
    return BuildRequest(**fields)


def assert_clean_failure(root: Path, req: BuildRequest) -> None:
    assert not version_dir(root, req.owner, req.name, req.version).exists()
    staging = staging_dir(root)
    assert not staging.exists() or list(staging.iterdir()) == []


def build_fails(
    root: Path, req: BuildRequest, error: type[DLHubError], match: str | None = None
) -> DLHubError:
    with pytest.raises(error, match=match) as info:
        build_version(req, root, LIMITS)
    assert_clean_failure(root, req)
    return info.value


# --- good packages -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "make"),
    [
        ("tar", lambda f: files_tar(f, compression="gz")),
        ("tar", lambda f: files_tar(f, compression="")),
        ("tar", lambda f: files_tar(f, compression="bz2")),
        ("zip", files_zip),
        ("tar", files_zip),  # the bytes decide, not the declared format
    ],
    ids=["tar.gz", "tar", "tar.bz2", "zip", "zip-declared-tar"],
)
def test_builds_a_normal_package(root: Path, fmt: str, make: Callable[[dict[str, bytes]], bytes]) -> None:
    outcome = build_version(request(make(GOOD_FILES), fmt), root, LIMITS)
    target = version_dir(root, "alice", "iris_rf", 1)
    assert outcome.path == str(target)
    assert outcome.files == sorted(GOOD_FILES)
    assert outcome.size_bytes == sum(len(data) for data in GOOD_FILES.values())
    assert outcome.digest.startswith("sha256:") and len(outcome.digest) == len("sha256:") + 64
    for name, data in GOOD_FILES.items():
        assert (target / FILES_DIRNAME / name).read_bytes() == data
    assert json.loads((target / METADATA_FILENAME).read_text()) == METADATA
    assert list(staging_dir(root).iterdir()) == []


def test_the_outcome_carries_the_version_folder_as_a_bundle_unless_it_is_too_large(
    root: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    outcome = build_version(request(files_tar(GOOD_FILES)), root, LIMITS)
    cache = tmp_path_factory.mktemp("cache")
    unpacked = install_bundle(outcome.bundle, bundle_digest(outcome.bundle), cache, EXTRACT)
    target = version_dir(root, "alice", "iris_rf", 1)
    assert sorted(p.relative_to(unpacked) for p in unpacked.rglob("*")) == sorted(
        p.relative_to(target) for p in target.rglob("*")
    )
    small = dataclasses.replace(LIMITS, max_bundle_bytes=100)
    big = build_version(request(files_tar(GOOD_FILES), name="other"), root, small)
    assert big.bundle == b""  # built all the same: only Task Managers without the builder's disk lose it
    log = json.loads(build_record_path(root, "alice", "other", 1).read_text())["log"]
    assert any("bundle of" in line and "not kept" in line for line in log)


def test_tar_with_dot_prefix_dirs_and_inside_links(root: Path) -> None:
    members = [
        tar_member("./", type_=tarfile.DIRTYPE),
        tar_member("./src", type_=tarfile.DIRTYPE),
        tar_member("./model.pkl", b"m"),
        tar_member("./src/a.py", b"a"),
        tar_member("./src/b.py", b"b"),
        tar_member("./src/alias.py", type_=tarfile.SYMTYPE, link="a.py"),
        tar_member("./src/up.pkl", type_=tarfile.SYMTYPE, link="../model.pkl"),
        tar_member("./copy.pkl", type_=tarfile.LNKTYPE, link="model.pkl"),
    ]
    outcome = build_version(request(make_tar(members)), root, LIMITS)
    files = Path(outcome.path) / FILES_DIRNAME
    assert (files / "src" / "up.pkl").read_bytes() == b"m"
    assert os.readlink(files / "src" / "alias.py") == "a.py"
    assert (files / "copy.pkl").read_bytes() == b"m"
    assert outcome.files == ["copy.pkl", "model.pkl", "src/a.py", "src/alias.py", "src/b.py", "src/up.pkl"]


def test_empty_package_has_no_files(root: Path) -> None:
    metadata = {"dlhub": {"name": "noop", "files": {}}}
    outcome = build_version(request(b"", "none", metadata=metadata, name="noop"), root, LIMITS)
    target = Path(outcome.path)
    assert outcome.files == [] and outcome.size_bytes == 0
    assert json.loads((target / METADATA_FILENAME).read_text()) == metadata
    assert (
        outcome.digest
        == build_version(request(b"", "tar", metadata=metadata, name="noop2"), root, LIMITS).digest
    )


def test_declared_folder_counts_as_present(root: Path) -> None:
    metadata = {"dlhub": {"files": {"model": "saved_model"}}}
    package = files_tar({"saved_model/saved_model.pb": b"pb", "saved_model/variables/v": b"v"})
    outcome = build_version(request(package, metadata=metadata), root, LIMITS)
    assert outcome.files == ["saved_model/saved_model.pb", "saved_model/variables/v"]


# --- hostile tar packages -----------------------------------------------------------------------------

HOSTILE_TARS: dict[str, list[Any]] = {
    "dotdot": [tar_member("../../../../evil", b"x")],
    "dotdot-nested": [tar_member("src/../../../../../evil", b"x")],
    "absolute": [tar_member("/tmp/x", b"x")],
    "symlink-etc-passwd": [tar_member("passwd", type_=tarfile.SYMTYPE, link="/etc/passwd")],
    "symlink-up": [tar_member("x", type_=tarfile.SYMTYPE, link="../../x")],
    "symlink-deep-up": [tar_member("a/b/x", type_=tarfile.SYMTYPE, link="../../../evil")],
    "hardlink-out": [tar_member("x", type_=tarfile.LNKTYPE, link="../../../../neighbour.txt")],
    "hardlink-absolute": [tar_member("x", type_=tarfile.LNKTYPE, link="/etc/passwd")],
    "hardlink-missing": [tar_member("x", type_=tarfile.LNKTYPE, link="nothere")],
    "char-device": [tar_member("dev", type_=tarfile.CHRTYPE)],
    "block-device": [tar_member("blk", type_=tarfile.BLKTYPE)],
    "fifo": [tar_member("pipe", type_=tarfile.FIFOTYPE)],
    "write-through-symlink": [
        tar_member("etc", type_=tarfile.SYMTYPE, link="/etc"),
        tar_member("etc/evil", b"x"),
    ],
    "write-through-inside-link": [
        tar_member("d", type_=tarfile.DIRTYPE),
        tar_member("l", type_=tarfile.SYMTYPE, link="d"),
        tar_member("l/evil", b"x"),
    ],
    "link-chain-escape": [
        tar_member("x", type_=tarfile.SYMTYPE, link="."),
        tar_member("y", type_=tarfile.SYMTYPE, link="x/.."),
    ],
    "link-chain-escape-reversed": [
        tar_member("y", type_=tarfile.SYMTYPE, link="x/.."),
        tar_member("x", type_=tarfile.SYMTYPE, link="."),
    ],
    "duplicate-file-then-link": [
        tar_member("model.pkl", b"m"),
        tar_member("model.pkl", type_=tarfile.SYMTYPE, link="/etc/passwd"),
    ],
    "backslash": [tar_member("..\\..\\evil", b"x")],
    "file-under-file": [tar_member("a", b"x"), tar_member("a/b", b"y")],
}


@pytest.fixture(params=[True, False], ids=["tar-filters", "no-tar-filters"])
def tar_filters(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """With and without tarfile's extraction filters (Python before 3.11.4, e.g. Debian 12's, has none)."""
    enabled: bool = request.param
    if enabled and not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python has no tarfile extraction filters")
    monkeypatch.setattr("dlhub.common.package.TAR_FILTERS", enabled)
    return enabled


@pytest.mark.parametrize("members", list(HOSTILE_TARS.values()), ids=list(HOSTILE_TARS))
def test_hostile_tar_is_rejected_whole(root: Path, members: list[Any], tar_filters: bool) -> None:
    # A good member first: it must not survive the rejection either.
    package = make_tar([tar_member("good.txt", b"g"), *members])
    error = build_fails(root, request(package, metadata={}), UnsafePackage)
    assert error.code == "unsafe_package"


@pytest.mark.parametrize(
    "case", ["symlink-up", "symlink-etc-passwd", "link-chain-escape", "link-chain-escape-reversed"]
)
def test_later_defences_hold_without_the_pre_check(
    root: Path, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the whole-archive pre-check disabled, filter="data" and the final tree walk still refuse."""
    monkeypatch.setattr("dlhub.common.package.check_entries", lambda _entries: None)
    build_fails(root, request(make_tar(HOSTILE_TARS[case]), metadata={}), UnsafePackage)


def test_extracted_modes_never_carry_special_bits(tmp_path: Path, tar_filters: bool) -> None:
    """setuid/setgid/sticky and group/other write bits from the archive never reach the extracted files."""
    setuid_tool, _ = tar_member("bin/tool", b"#!/bin/sh\n")
    setuid_tool.mode = 0o6777
    plain, _ = tar_member("data.txt", b"d")
    plain.mode = 0o666
    package = make_tar([(setuid_tool, b"#!/bin/sh\n"), (plain, b"d")])
    dest = tmp_path / "out"
    dest.mkdir()
    extract_package(package, "tar", dest, ExtractLimits(max_extracted_bytes=1 << 20, max_files=10))
    assert (dest / "bin/tool").read_bytes() == b"#!/bin/sh\n"
    assert stat.S_IMODE((dest / "bin/tool").stat().st_mode) & 0o7022 == 0
    assert stat.S_IMODE((dest / "bin/tool").stat().st_mode) & 0o100
    assert stat.S_IMODE((dest / "data.txt").stat().st_mode) & 0o7133 == 0


def test_unsafe_error_names_the_member(root: Path) -> None:
    package = make_tar([tar_member("model.pkl", b"m"), tar_member("../../evil.sh", b"x")])
    error = build_fails(root, request(package), UnsafePackage, match="evil.sh")
    assert "'..'" in error.message


# --- hostile zip packages -----------------------------------------------------------------------------

HOSTILE_ZIPS: dict[str, list[tuple[zipfile.ZipInfo, bytes]]] = {
    "dotdot": [zip_entry("../../../../evil", b"x")],
    "dotdot-nested": [zip_entry("a/../../../../../evil", b"x")],
    "absolute": [zip_entry("/tmp/x", b"x")],
    "drive": [zip_entry("C:/evil", b"x")],
    "symlink-etc-passwd": [zip_entry("passwd", b"/etc/passwd", mode=stat.S_IFLNK | 0o777)],
    "symlink-up": [zip_entry("x", b"../../x", mode=stat.S_IFLNK | 0o777)],
    "fifo": [zip_entry("pipe", b"", mode=stat.S_IFIFO | 0o644)],
    "char-device": [zip_entry("dev", b"", mode=stat.S_IFCHR | 0o644)],
    "write-through-symlink": [
        zip_entry("etc", b"/etc", mode=stat.S_IFLNK | 0o777),
        zip_entry("etc/evil", b"x"),
    ],
}


@pytest.mark.parametrize("entries", list(HOSTILE_ZIPS.values()), ids=list(HOSTILE_ZIPS))
def test_hostile_zip_is_rejected_whole(root: Path, entries: list[tuple[zipfile.ZipInfo, bytes]]) -> None:
    package = make_zip([zip_entry("model.pkl", b"m"), *entries])
    build_fails(root, request(package, "zip", metadata={}), UnsafePackage)


def test_zip_symlink_inside_is_kept_as_link(root: Path) -> None:
    package = make_zip(
        [zip_entry("model.pkl", b"m"), zip_entry("alias.pkl", b"model.pkl", mode=stat.S_IFLNK | 0o777)]
    )
    outcome = build_version(request(package, "zip", metadata={}), root, LIMITS)
    assert os.readlink(Path(outcome.path) / FILES_DIRNAME / "alias.pkl") == "model.pkl"


# --- limits --------------------------------------------------------------------------------------------


def test_zip_bomb_stops_at_the_extracted_limit(root: Path) -> None:
    package = make_zip([zip_entry("bomb.bin", bytes(20 * MiB))])
    assert len(package) < 100 * 1024  # tiny on the wire
    build_fails(root, request(package, "zip", metadata={}), PayloadTooLarge, match="extract")


def test_tar_bomb_stops_at_the_extracted_limit(root: Path) -> None:
    package = files_tar({"a.bin": bytes(3 * MiB), "b.bin": bytes(3 * MiB)})
    assert len(package) < 100 * 1024
    build_fails(root, request(package, metadata={}), PayloadTooLarge, match="extract")


def test_zip_that_lies_about_its_size_is_stopped_while_writing(tmp_path: Path) -> None:
    """A central directory that declares a small size cannot smuggle in more bytes than declared."""
    package = bytearray(make_zip([zip_entry("bomb.bin", bytes(2 * MiB))]))
    # Rewrite the declared uncompressed size (local header and central directory) to 10 bytes.
    local = package.index(b"PK\x03\x04")
    package[local + 22 : local + 26] = (10).to_bytes(4, "little")
    central = package.index(b"PK\x01\x02")
    package[central + 24 : central + 28] = (10).to_bytes(4, "little")
    dest = tmp_path / "files"
    dest.mkdir()
    with pytest.raises((UnsafePackage, BuildFailed)):
        extract_package(bytes(package), "zip", dest, ExtractLimits(max_extracted_bytes=MiB, max_files=10))
    written = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    assert written <= 10


@pytest.mark.parametrize("fmt", ["tar", "zip"])
def test_too_many_files(root: Path, fmt: str) -> None:
    files = {f"f{i}.txt": b"x" for i in range(LIMITS.max_files + 1)}
    package = files_tar(files) if fmt == "tar" else files_zip(files)
    build_fails(root, request(package, fmt, metadata={}), PayloadTooLarge, match="members")


def test_package_over_the_upload_limit(root: Path) -> None:
    limits = BuildLimits(max_package_bytes=1000, max_extracted_bytes=MiB, max_files=10)
    package = files_tar({"noise.bin": os.urandom(4000)})
    with pytest.raises(PayloadTooLarge):
        build_version(request(package, metadata={}), root, limits)
    assert_clean_failure(root, request(package))


# --- validation ----------------------------------------------------------------------------------------


def test_missing_declared_file(root: Path) -> None:
    package = files_tar({"model.pkl": b"m", "src/a.py": b"a"})
    error = build_fails(root, request(package), BuildFailed, match="src/b.py")
    assert error.code == "build_failed"


def test_declared_file_outside_the_package_is_refused(root: Path) -> None:
    metadata = {"dlhub": {"files": {"model": "../../../data/neighbour.txt"}}}
    build_fails(root, request(files_tar({"model.pkl": b"m"}), metadata=metadata), BuildFailed)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"owner": "../etc"}, "owner"),
        ({"owner": ""}, "owner"),
        ({"name": "a/b"}, "name"),
        ({"name": ".hidden"}, "name"),
        ({"version": 0}, "version"),
    ],
)
def test_invalid_names_and_versions(root: Path, changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        build_version(request(files_tar(GOOD_FILES), **changes), root, LIMITS)
    assert info.value.field == field
    assert snapshot(root, root / "nothing") == set()


def test_malformed_dlhub_files(root: Path) -> None:
    metadata = {"dlhub": {"files": {"model": 42}}}
    build_fails(root, request(files_tar(GOOD_FILES), metadata=metadata), BuildFailed, match="dlhub.files")


@pytest.mark.parametrize("fmt", ["tar", "zip"])
def test_corrupt_archive(root: Path, fmt: str) -> None:
    package = (files_tar(GOOD_FILES) if fmt == "tar" else files_zip(GOOD_FILES))[:-40] + b"garbage"
    build_fails(root, request(package, fmt), BuildFailed)


def test_bytes_with_format_none_are_refused(root: Path) -> None:
    build_fails(root, request(files_tar(GOOD_FILES), "none"), BuildFailed, match="none")


# --- digests and immutability --------------------------------------------------------------------------


def test_digest_is_stable_across_formats_order_and_mtimes(root: Path) -> None:
    reordered = dict(reversed(list(GOOD_FILES.items())))
    digests = {
        build_version(request(package, fmt, version=v), root, LIMITS).digest
        for v, (package, fmt) in enumerate(
            [
                (files_tar(GOOD_FILES), "tar"),
                (files_tar(reordered, mtime=1), "tar"),
                (files_tar(GOOD_FILES, compression=""), "tar"),
                (files_zip(reordered), "zip"),
            ],
            start=1,
        )
    }
    assert len(digests) == 1
    changed = {**GOOD_FILES, "model.pkl": b"pickled-modeL"}
    assert build_version(request(files_tar(changed), version=9), root, LIMITS).digest not in digests
    renamed = {**GOOD_FILES, "extra/x": b""}
    assert build_version(request(files_tar(renamed), version=10), root, LIMITS).digest not in digests


def test_compute_digest_matches_outcome(root: Path) -> None:
    outcome = build_version(request(files_tar(GOOD_FILES)), root, LIMITS)
    digest, files, size = compute_digest(Path(outcome.path) / FILES_DIRNAME)
    assert (digest, files, size) == (outcome.digest, outcome.files, outcome.size_bytes)


def test_rebuilding_a_version_is_idempotent_or_a_conflict(root: Path) -> None:
    first = build_version(request(files_tar(GOOD_FILES)), root, LIMITS)
    again = build_version(request(files_zip(GOOD_FILES), "zip"), root, LIMITS)
    assert again == first
    changed = {**GOOD_FILES, "model.pkl": b"other"}
    with pytest.raises(Conflict):
        build_version(request(files_tar(changed)), root, LIMITS)
    with pytest.raises(Conflict):
        build_version(request(files_tar(GOOD_FILES), metadata={**METADATA, "extra": 1}), root, LIMITS)
    target = Path(first.path)
    assert (target / FILES_DIRNAME / "model.pkl").read_bytes() == GOOD_FILES["model.pkl"]
    assert json.loads((target / METADATA_FILENAME).read_text()) == METADATA
    assert list(staging_dir(root).iterdir()) == []


def test_sweep_staging_removes_only_old_leftovers(root: Path) -> None:
    staging = staging_dir(root)
    old, fresh = staging / "old", staging / "fresh"
    for folder in (old, fresh):
        (folder / "files").mkdir(parents=True)
    past = time.time() - 7200
    os.utime(old, (past, past))
    assert sweep_staging(root) == 1
    assert not old.exists() and fresh.exists()
    for folder in (fresh / "files", fresh):
        folder.rmdir()


# --- service glue --------------------------------------------------------------------------------------


def dispatch(inputs: msgspec.Raw, task_id: str = "t1") -> Dispatch:
    return Dispatch(task_id=task_id, step=0, topic=BUILDER_TOPIC, method="build", inputs=inputs)


async def test_service_handles_a_build(root: Path) -> None:
    codec = Codec()
    service = BuilderService(root=root, limits=LIMITS, codec=codec)
    result = await service.handle(dispatch(codec.encode_value(request(files_tar(GOOD_FILES)))))
    assert result.ok and result.task_id == "t1"
    outcome = decode_payload(result.output, BuildOutcome)
    assert outcome.files == sorted(GOOD_FILES)


async def test_service_raises_typed_errors(root: Path) -> None:
    codec = Codec()
    service = BuilderService(root=root, limits=LIMITS, codec=codec)
    with pytest.raises(InvalidMessage):
        await service.handle(dispatch(codec.encode_value({"owner": "alice"})))
    with pytest.raises(UnsafePackage):
        bad = make_tar([tar_member("../../x", b"x")])
        await service.handle(dispatch(codec.encode_value(request(bad))))


async def test_service_turns_unexpected_errors_into_build_failed(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*_args: Any) -> BuildOutcome:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("dlhub.builder.service.build_version", explode)
    codec = Codec()
    service = BuilderService(root=root, limits=LIMITS, codec=codec)
    with pytest.raises(BuildFailed, match="disk on fire"):
        await service.handle(dispatch(codec.encode_value(request(b"", "none"))))
