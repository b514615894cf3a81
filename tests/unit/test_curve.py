"""The bus keys (dlhub.common.curve): files and their modes, roles and rights, tagged identities, settings."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import zmq.auth
from click.testing import CliRunner

from dlhub.broker.__main__ import main as broker_main
from dlhub.client.cli import _curve_keys_dir
from dlhub.client.cli import main as cli_main
from dlhub.client.launcher import Stack, StackOptions
from dlhub.common.config import BusConfig, load_settings
from dlhub.common.curve import (
    BROKER_KEY,
    ROLES,
    CurveKeyError,
    authorized_keys,
    client_keys_for,
    create_keys,
    load_client_keys,
    rights_of,
    role_of,
    tagged_identity,
    untagged,
)
from dlhub.common.messages import Heartbeat, Register, Result, StatsRequest, Submit


def test_create_keys_writes_private_secret_files_and_keeps_existing_ones(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    assert create_keys(keys_dir) == [BROKER_KEY, *ROLES]
    assert stat.S_IMODE(keys_dir.stat().st_mode) == 0o700
    for name in (BROKER_KEY, *ROLES):
        assert stat.S_IMODE((keys_dir / f"{name}.key_secret").stat().st_mode) == 0o600
        public, secret = zmq.auth.load_certificate(keys_dir / f"{name}.key_secret")
        assert secret is not None and len(public) == len(secret) == 40
        assert zmq.auth.load_certificate(keys_dir / f"{name}.key") == (public, None)
    before = (keys_dir / "worker.key_secret").read_bytes()
    assert create_keys(keys_dir) == []
    assert create_keys(keys_dir, ["worker", "worker-gpu01"]) == ["worker-gpu01"]
    assert (keys_dir / "worker.key_secret").read_bytes() == before
    assert create_keys(keys_dir, ["worker"], overwrite=True) == ["worker"]
    assert (keys_dir / "worker.key_secret").read_bytes() != before


@pytest.mark.parametrize("name", ["bogus", "workers", "worker-", "worker-a/b", "registry-" + "x" * 65, ""])
def test_key_names_must_name_a_role(tmp_path: Path, name: str) -> None:
    assert role_of(name) is None
    with pytest.raises(ValueError, match="is not broker"):
        create_keys(tmp_path / "keys", [name])


def test_the_broker_admits_every_role_key_but_its_own_and_unnamed_ones(tmp_path: Path) -> None:
    create_keys(tmp_path, [BROKER_KEY, "registry", "worker-gpu01"])
    (tmp_path / "stray.key").write_bytes((tmp_path / "registry.key").read_bytes())  # no role: ignored
    admitted = authorized_keys(tmp_path)
    assert sorted(admitted.values()) == ["registry", "worker-gpu01"]
    assert zmq.auth.load_certificate(tmp_path / "registry.key")[0] in admitted


def test_rights_follow_the_role() -> None:
    worker, registry, admin = rights_of("worker-gpu01"), rights_of("registry"), rights_of("admin")
    assert worker.role == "worker" and Register in worker.messages and Result in worker.messages
    assert Submit not in worker.messages and StatsRequest in worker.messages
    assert worker.may_register(["servable/*", "servable/alice/m@1"])
    assert not worker.may_register(["servable/*", "builder/build"])
    assert rights_of("builder").may_register(["builder/build"]) and not rights_of("builder").may_register(
        ["*"]
    )
    assert rights_of("search").may_register(["search/query", "search/index", "search/reindex"])
    assert Submit in registry.messages and Register not in registry.messages
    assert not registry.may_register(["servable/*"])  # no topic prefix at all
    assert admin.messages == {StatsRequest, Heartbeat}
    with pytest.raises(ValueError):
        rights_of(BROKER_KEY)


def test_tagged_identities_are_stable_per_key_and_differ_across_keys(tmp_path: Path) -> None:
    create_keys(tmp_path)
    registry = load_client_keys(tmp_path, "registry")
    worker = load_client_keys(tmp_path, "worker")
    tagged = tagged_identity("registry@host:8642", registry)
    assert tagged == tagged_identity("registry@host:8642", load_client_keys(tmp_path, "registry"))
    assert tagged != tagged_identity("registry@host:8642", worker)
    assert tagged.startswith(b"registry@host:8642~") and len(tagged) == len("registry@host:8642~") + 32
    assert untagged(tagged.decode()) == "registry@host:8642"
    assert tagged_identity("plain", None) == b"plain"
    assert "secret" not in repr(registry) and registry.secret.decode() not in repr(registry)


def test_client_keys_follow_the_bus_settings(tmp_path: Path) -> None:
    assert client_keys_for(BusConfig(), "worker") is None
    assert client_keys_for(BusConfig(curve_enabled=False, curve_keys_dir=tmp_path), "worker") is None
    on = BusConfig(curve_enabled=True, curve_keys_dir=tmp_path)
    with pytest.raises(CurveKeyError, match=r"worker\.key_secret"):
        client_keys_for(on, "worker")
    create_keys(tmp_path, [BROKER_KEY, "worker", "worker-b"])
    keys = client_keys_for(on, "worker")
    assert keys is not None and keys.name == "worker"
    assert keys.server_public == zmq.auth.load_certificate(tmp_path / "broker.key")[0]
    named = client_keys_for(on.model_copy(update={"curve_key_name": "worker-b"}), "worker")
    assert named is not None and named.name == "worker-b" and named.public != keys.public
    with pytest.raises(CurveKeyError, match="curve_keys_dir"):
        client_keys_for(BusConfig(curve_enabled=True), "worker")


def test_keys_dir_defaults_to_the_data_dir_and_dlhub_up_turns_keys_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("DLHUB_BUS__CURVE_ENABLED", "DLHUB_BUS__CURVE_KEYS_DIR", "DLHUB_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(data_dir=tmp_path / "data")
    assert settings.bus.curve_enabled is None and settings.bus.curve_keys_dir == tmp_path / "data" / "keys"
    moved = tmp_path / "elsewhere"
    assert _curve_keys_dir(settings, moved, None) == moved / "keys"  # `dlhub up --data-dir` moves them
    assert _curve_keys_dir(settings, moved, False) is None
    explicit = load_settings(data_dir=tmp_path / "data", bus={"curve_keys_dir": tmp_path / "k"})
    assert _curve_keys_dir(explicit, moved, None) == tmp_path / "k"
    assert _curve_keys_dir(load_settings(bus={"curve_enabled": False}), moved, None) is None
    assert _curve_keys_dir(load_settings(bus={"curve_enabled": False}), moved, True) == moved / "keys"


def test_the_launcher_passes_the_keys_to_every_service(tmp_path: Path) -> None:
    on = Stack(StackOptions(data_dir=tmp_path, curve_keys_dir=tmp_path / "keys")).environment()
    assert on["DLHUB_BUS__CURVE_ENABLED"] == "true" and on["DLHUB_BUS__CURVE_KEYS_DIR"] == str(
        tmp_path / "keys"
    )
    off = Stack(StackOptions(data_dir=tmp_path)).environment()
    assert off["DLHUB_BUS__CURVE_ENABLED"] == "false"


def test_the_key_commands_write_keys_and_refuse_bad_names(tmp_path: Path) -> None:
    broker_main(["keys", "create", "--dir", str(tmp_path / "a")])
    assert sorted(p.name for p in (tmp_path / "a").glob("*.key")) == sorted(
        f"{n}.key" for n in (BROKER_KEY, *ROLES)
    )
    with pytest.raises(SystemExit) as exited:
        broker_main(["keys", "create", "--dir", str(tmp_path / "a"), "nobody"])
    assert exited.value.code == 2
    result = CliRunner().invoke(cli_main, ["keys", "create", "--dir", str(tmp_path / "b"), "worker-gpu01"])
    assert result.exit_code == 0, result.output
    assert "worker-gpu01.key_secret" in result.output and "secret-key" not in result.output
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [
        "worker-gpu01.key",
        "worker-gpu01.key_secret",
    ]
    assert CliRunner().invoke(cli_main, ["keys", "create", "--dir", str(tmp_path / "b"), "x"]).exit_code == 2
