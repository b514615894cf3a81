"""The docker backend of per-servable environments: one image per environment, built with the ``docker`` SDK.

The image is ``FROM <docker_base_image>`` with a venv at ``/opt/env`` holding the lock, installed by the
base image's ``python3 -m venv`` pip with ``--require-hashes --no-deps`` (the lock is complete), tagged
``dlhub-env:<environment id>`` (the id digests backend, Python, base image and lock) and optionally pushed to
``docker_registry``. The build runs on the host network or none (never a bridge); the index URL and CA
bundle of the deployment are passed in as build files (CA) and build arguments (index URLs).

Executors run as ``docker run -i`` children of the worker: the executor protocol travels over the
container's stdin/stdout exactly as with a local process, so the pool needs no other transport. (The CLI is
used to run because it turns the attach stream into plain pipes; the SDK builds, inspects and pulls.)
Every container runs as a non-root user with all capabilities dropped, ``no-new-privileges``, a read-only
root filesystem, a private ``/tmp`` tmpfs, no Docker socket, the DLHub runtime and servable store mounted
read-only, and no network unless the servable declares ``dlhub.environment.network``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Final

from dlhub.common.config import EnvironmentsConfig
from dlhub.common.environments import BuildLog, Deadline, EnvironmentRecord, index_settings
from dlhub.common.errors import BuildFailed, EnvironmentUnavailable

IMAGE_REPOSITORY: Final = "dlhub-env"
ENV_PREFIX: Final = "/opt/env"
RUNTIME_MOUNT: Final = "/opt/dlhub-runtime"
LABEL_ENV: Final = "org.dlhub.environment"


def image_tag(record: EnvironmentRecord, config: EnvironmentsConfig) -> str:
    local = f"{IMAGE_REPOSITORY}:{record.id}"
    if config.docker_registry:
        return f"{config.docker_registry.rstrip('/')}/{local}"
    return local


def dockerfile(base_image: str, has_ca: bool) -> str:
    cert = "ENV PIP_CERT=/tmp/dlhub-build/ca.pem\n" if has_ca else ""
    return (
        f"FROM {base_image}\n"
        "ARG PIP_INDEX_URL\n"
        "ARG PIP_EXTRA_INDEX_URL\n"
        f"{cert}"
        "COPY . /tmp/dlhub-build/\n"
        f"RUN python3 -m venv {ENV_PREFIX} \\\n"
        f" && {ENV_PREFIX}/bin/python -m pip install --no-cache-dir --no-input --disable-pip-version-check"
        " --require-hashes --no-deps -r /tmp/dlhub-build/requirements.lock \\\n"
        " && rm -rf /tmp/dlhub-build\n"
        "ENV PIP_CERT=\n"
        f'LABEL {LABEL_ENV}="{{env_id}}"\n'
    )


class DockerBackend:
    """Builds (and finds, and pulls) environment images; tells the worker how to run an executor in one."""

    def __init__(self, config: EnvironmentsConfig) -> None:
        self.config = config
        self._client: Any = None

    def client(self) -> Any:
        """The engine client, checked with a ping; ``EnvironmentUnavailable`` when there is no engine."""
        if self._client is not None:
            return self._client
        try:
            import docker
        except ImportError as exc:
            raise EnvironmentUnavailable(
                "the docker backend needs the docker package (pip install docker)"
            ) from exc
        try:
            if self.config.docker_url:
                client = docker.DockerClient(base_url=self.config.docker_url, timeout=120)
            else:
                client = docker.from_env(timeout=120)
            client.ping()
        except Exception as exc:
            where = self.config.docker_url or "the default Docker socket"
            raise EnvironmentUnavailable(f"no Docker engine answers at {where}: {exc}") from exc
        self._client = client
        return client

    def image_exists(self, tag: str) -> bool:
        import docker.errors

        try:
            self.client().images.get(tag)
        except docker.errors.ImageNotFound:
            return False
        return True

    def ensure(self, record: EnvironmentRecord, log: BuildLog, deadline: Deadline) -> str:
        """Build the image of ``record`` unless the engine has it (or can pull it); return its tag."""
        import docker.errors

        tag = image_tag(record, self.config)
        client = self.client()
        if self.image_exists(tag):
            return tag
        if self.config.docker_registry:
            try:
                client.images.pull(tag)
                log.line(f"pulled {tag}")
                return tag
            except docker.errors.APIError as exc:
                log.line(f"pull of {tag} failed ({exc}); building it")
        if record.python != self.config.docker_base_python:
            raise BuildFailed(
                f"Python {record.python} is not available in the base image {self.config.docker_base_image} "
                f"(it has {self.config.docker_base_python})"
            )
        context = Path(tempfile.mkdtemp(prefix="dlhub-image-"))
        try:
            self._build(record, tag, context, log, deadline)
        finally:
            shutil.rmtree(context, ignore_errors=True)
        image = client.images.get(tag)
        size = int(image.attrs.get("Size") or 0)
        if size > self.config.max_env_bytes:
            client.images.remove(tag, force=True)
            raise BuildFailed(f"image of {size} bytes exceeds the quota of {self.config.max_env_bytes} bytes")
        log.line(f"image {tag}: {size} bytes")
        if self.config.docker_registry:
            for line in client.images.push(tag, stream=True, decode=True):
                if isinstance(line, dict) and line.get("error"):
                    raise BuildFailed(f"pushing {tag} failed: {line['error']}")
            log.line(f"pushed {tag}")
        return tag

    def _build(
        self, record: EnvironmentRecord, tag: str, context: Path, log: BuildLog, deadline: Deadline
    ) -> None:
        index = index_settings(self.config)
        has_ca = index.ca_bundle is not None and index.ca_bundle.is_file()
        if has_ca and index.ca_bundle is not None:
            shutil.copyfile(index.ca_bundle, context / "ca.pem")
        (context / "requirements.lock").write_text(record.lock, encoding="utf-8")
        text = dockerfile(self.config.docker_base_image, has_ca).replace("{env_id}", record.id)
        (context / "Dockerfile").write_text(text, encoding="utf-8")
        buildargs = {}
        if index.index_url:
            buildargs["PIP_INDEX_URL"] = index.index_url
        if index.extra_index_urls:
            buildargs["PIP_EXTRA_INDEX_URL"] = " ".join(index.extra_index_urls)
        api = self.client().api
        api.timeout = max(1.0, deadline.remaining("building the image"))
        error = ""
        try:
            stream = api.build(
                path=str(context),
                tag=tag,
                rm=True,
                forcerm=True,
                pull=False,
                network_mode=self.config.docker_build_network,
                buildargs=buildargs,
                decode=True,
                labels={LABEL_ENV: record.id},
            )
            for chunk in stream:
                if "stream" in chunk:
                    log.line(str(chunk["stream"]))
                if "error" in chunk:
                    error = str(chunk["error"])
                deadline.remaining("building the image")
        except Exception as exc:
            if isinstance(exc, BuildFailed):
                raise
            raise BuildFailed(f"building the image failed: {exc}") from exc
        if error:
            tail = "\n".join(log.record.log[-40:])
            raise BuildFailed(f"building the image failed: {error}\n{tail}")

    def run_argv(
        self,
        record: EnvironmentRecord,
        *,
        runtime: Path,
        servable_root: Path,
        executor_args: list[str],
        name: str,
    ) -> list[str]:
        """``docker run`` for one executor process of this environment (stdin/stdout are the protocol)."""
        docker_cli = shutil.which("docker")
        if docker_cli is None:
            raise EnvironmentUnavailable("the docker CLI is not installed on this worker")
        host = ["-H", self.config.docker_url] if self.config.docker_url else []
        root = str(servable_root.resolve())
        return [
            docker_cli, *host, "run", "--rm", "-i", "--init",
            # The protocol on stdout is not a log: json-file would copy every response into a file that
            # grows for the container's life and costs dockerd CPU per request; attach works without it.
            "--log-driver", "none",
            "--name", name,
            "--label", f"{LABEL_ENV}={record.id}",
            "--user", self.config.docker_user,
            "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges",
            "--read-only",
            "--tmpfs", f"/tmp:rw,nosuid,nodev,size={self.config.docker_tmpfs_bytes}",
            "--network", "host" if record.network else "none",
            "--env", f"PYTHONPATH={RUNTIME_MOUNT}",
            "--env", "PYTHONDONTWRITEBYTECODE=1",
            "--env", "HOME=/tmp",
            "--volume", f"{runtime.resolve()}:{RUNTIME_MOUNT}:ro",
            "--volume", f"{root}:{root}:ro",
            image_tag(record, self.config),
            f"{ENV_PREFIX}/bin/python", "-m", "dlhub.worker.executor", *executor_args,
        ]  # fmt: skip
