"""The real test servers of scripts/test-servers answer, and starting them again is a quick no-op."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pymongo
import pytest

from tests.support.servers import is_ferretdb

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "test_servers.py"


def test_mongodb_answers(mongodb_url: str) -> None:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        mongodb_url, serverSelectionTimeoutMS=5000
    )
    database = "dlhub_test_servers_" + uuid.uuid4().hex[:12]
    try:
        assert client.admin.command("ping")["ok"] == 1
        collection = client[database]["probe"]
        collection.insert_one({"_id": "a", "n": 1})
        assert collection.find_one({"_id": "a"}) == {"_id": "a", "n": 1}
    finally:
        client.drop_database(database)
        client.close()
    assert isinstance(is_ferretdb(mongodb_url), bool)


def test_elasticsearch_answers(elasticsearch_url: str) -> None:
    health = httpx.get(f"{elasticsearch_url}/_cluster/health", params={"wait_for_status": "yellow"}).json()
    assert health["status"] in ("green", "yellow")
    index = f"{elasticsearch_url}/dlhub-test-servers-{uuid.uuid4().hex[:12]}"
    try:
        assert httpx.put(index, json={"settings": {"number_of_replicas": 0}}).status_code == 200
        doc = {"title": "Arithmetic mean", "owner": "jane"}
        assert httpx.put(f"{index}/_doc/1", params={"refresh": "true"}, json=doc).status_code == 201
        hits = httpx.post(f"{index}/_search", json={"query": {"match": {"title": "arithmetic"}}}).json()
        assert [hit["_source"] for hit in hits["hits"]["hits"]] == [doc]
    finally:
        httpx.delete(index)


def _local_port(url: str) -> int:
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost") or parts.port is None:
        pytest.skip(
            f"{url} is not a loopback server with an explicit port: not one scripts/test-servers runs"
        )
    return parts.port


def test_start_again_is_a_quick_noop(mongodb_url: str, elasticsearch_url: str) -> None:
    env = dict(
        os.environ,
        DLHUB_TEST_MONGODB_PORT=str(_local_port(mongodb_url)),
        DLHUB_TEST_ELASTICSEARCH_PORT=str(_local_port(elasticsearch_url)),
    )
    began = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=60
    )
    elapsed = time.monotonic() - began
    assert proc.returncode == 0, proc.stderr
    assert "starting" not in proc.stderr, proc.stderr
    for name in ("mongodb", "elasticsearch"):
        assert f"{name}: already" in proc.stderr, proc.stderr
    assert elapsed < 15, f"a no-op start took {elapsed:.1f} s"

    status = subprocess.run([sys.executable, str(SCRIPT), "status"], env=env, capture_output=True, text=True)
    assert status.returncode == 0, status.stdout + status.stderr
    exports = subprocess.run([sys.executable, str(SCRIPT), "env"], env=env, capture_output=True, text=True)
    assert f"export DLHUB_TEST_MONGODB_URL=mongodb://127.0.0.1:{_local_port(mongodb_url)}/" in exports.stdout
    assert f"export DLHUB_TEST_ELASTICSEARCH_URL=http://127.0.0.1:{_local_port(elasticsearch_url)}" in (
        exports.stdout
    )


def test_container_registry_answers(container_registry: str) -> None:
    """The Distribution registry speaks the registry API v2 without authentication, on loopback."""
    response = httpx.get(f"http://{container_registry}/v2/", timeout=5)
    assert response.status_code == 200
    assert response.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
    assert container_registry.startswith("127.0.0.1:")
    repository = f"dlhub-test-servers-{uuid.uuid4().hex[:12]}/probe"
    missing = httpx.get(f"http://{container_registry}/v2/{repository}/tags/list", timeout=5)
    assert missing.status_code == 404
    assert missing.json()["errors"][0]["code"] == "NAME_UNKNOWN"


def test_env_exports_the_container_registry() -> None:
    env = dict(os.environ, DLHUB_TEST_REGISTRY_PORT="15123")
    exports = subprocess.run([sys.executable, str(SCRIPT), "env"], env=env, capture_output=True, text=True)
    assert exports.returncode == 0, exports.stderr
    assert "export DLHUB_TEST_CONTAINER_REGISTRY=127.0.0.1:15123" in exports.stdout


def test_s3_server_answers(s3_url: str) -> None:
    """moto's S3 on loopback: a bucket, an object written and read back with boto3, a missing key refused."""
    from botocore.exceptions import ClientError

    from tests.support.s3 import new_bucket, s3_client

    assert s3_url.startswith("http://127.0.0.1:")
    client = s3_client(s3_url)
    bucket = new_bucket(client)
    client.put_object(Bucket=bucket, Key="probe/a.bin", Body=b"hello")
    assert client.get_object(Bucket=bucket, Key="probe/a.bin")["Body"].read() == b"hello"
    with pytest.raises(ClientError) as caught:
        client.get_object(Bucket=bucket, Key="probe/missing.bin")
    assert caught.value.response["Error"]["Code"] == "NoSuchKey"


def test_env_exports_the_s3_server() -> None:
    env = dict(os.environ, DLHUB_TEST_S3_PORT="15567")
    exports = subprocess.run([sys.executable, str(SCRIPT), "env"], env=env, capture_output=True, text=True)
    assert exports.returncode == 0, exports.stderr
    assert "export DLHUB_TEST_S3_URL=http://127.0.0.1:15567" in exports.stdout


def test_slurm_runs_a_batch_job(slurm_env: dict[str, str], tmp_path: Path) -> None:
    """The one-node cluster: node ``localhost`` usable in partition ``dlhub``, a job runs there and ends."""
    nodes = subprocess.run(
        ["sinfo", "--noheader", "--Node", "--format=%N %P %T"], env=slurm_env, capture_output=True, text=True
    )
    assert nodes.returncode == 0, nodes.stderr
    node, partition, state = nodes.stdout.split()
    assert (node, partition.rstrip("*")) == ("localhost", "dlhub")
    assert state in ("idle", "mixed", "allocated", "completing")
    out = tmp_path / "job.out"
    job = subprocess.run(
        ["sbatch", "--wait", "--parsable", "--partition=dlhub", f"--output={out}", "--time=1",
         "--wrap", "echo job $SLURM_JOB_ID on $SLURMD_NODENAME"],
        env=slurm_env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert job.returncode == 0, job.stderr
    assert out.read_text().split() == ["job", job.stdout.strip(), "on", "localhost"]


def test_slurm_start_again_is_a_quick_noop(slurm_env: dict[str, str]) -> None:
    began = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "start", "--only", "slurm"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "slurm: already running" in proc.stderr, proc.stderr
    assert time.monotonic() - began < 15


def test_env_exports_the_slurm_conf(tmp_path: Path) -> None:
    env = dict(os.environ, DLHUB_TEST_RUN=str(tmp_path))
    exports = subprocess.run([sys.executable, str(SCRIPT), "env"], env=env, capture_output=True, text=True)
    assert exports.returncode == 0, exports.stderr
    assert f"export DLHUB_TEST_SLURM_CONF={tmp_path / 'slurm' / 'slurm.conf'}" in exports.stdout
    assert "export DLHUB_TEST_SLURM_PARTITION=dlhub" in exports.stdout
