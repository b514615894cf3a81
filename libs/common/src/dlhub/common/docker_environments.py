"""The docker backend of per-servable environments: one image per environment, built with the ``docker`` SDK.

The image is the ``docker_base_image`` plus a venv at ``/opt/env`` holding the lock, installed by the base
image's ``python3 -m venv`` pip with ``--require-hashes --no-deps`` (the lock is complete), tagged
``dlhub-env:<environment id>`` (the id digests backend, Python, base image and lock), or
``<docker_registry>/dlhub-env:<environment id>`` when a container registry is configured.

With a registry, the builder (``publish``) pushes every image it builds (or finds) and records the pushed tag
and its repository digest (``<registry>/dlhub-env@sha256:...``) in the environment record. A worker lacking
the image (``ensure``) pulls it by that digest, so it runs exactly the bytes the builder pushed, and tags it
with the recorded tag; only when no registry is configured, nothing was recorded as pushed, or the pull fails
does it rebuild the image from the lock, and it logs which of these happened. Registry failures are
``RegistryError`` (``registry_error``) naming the registry and carrying the engine's or registry's message.
Credentials (``docker_registry_username``/``docker_registry_password``) go to the engine per request
(``X-Registry-Auth``) and are never logged.

The build leaves no trace of the deployment's index settings: instead of a Dockerfile (whose build
arguments show in ``docker history`` and whose ``COPY`` layers keep every copied file, and whose BuildKit
secrets need a BuildKit-enabled engine, which Debian's docker.io 20.10 daemon behind the SDK is not), a
build container of the base image runs the install with a temporary read-only bind mount holding the lock,
a ``pip.conf`` (index URLs, ``cert``) and the CA bundle; the container is then committed (bind mounts and
tmpfs are never part of a commit) with only the environment label. The container runs on the host network
or none (``docker_build_network``), never a bridge, and is removed afterwards.

Executors run as ``docker run`` children of the worker (the CLI's lifetime and exit status are the
container's; the SDK builds, inspects, pulls, kills and removes). The executor protocol does not travel over
the attach stream, whose relay (CLI, dockerd, containerd-shim) costs 150-200 us of CPU per request: the worker
listens on a unix socket in a private directory of its own (``mkdtemp``, mode 0700, so no other user of the
host can reach it), whose inner directory alone is bind-mounted read-only at ``SOCKET_MOUNT``; the executor
connects to it (``--socket``), the worker accepts that one connection, checks its peer's uid when it can, and
closes and unlinks the listener before the first request. Every container has a unique name and the labels of
its environment, its worker process and its worker's data directory; it runs with ``--rm``, as a non-root user
with all capabilities dropped, ``no-new-privileges``, a read-only root filesystem, a private ``/tmp`` tmpfs,
no Docker socket, memory, CPU and process limits, read-only mounts of only the DLHub runtime, the one version
directory it serves and its socket's directory, and no network unless the servable declares
``dlhub.environment.network``. When the worker kills an executor (deadline, crash, eviction, shutdown) it also
removes its container through the engine; a worker starting up removes the containers of a previous worker
process of its data directory that is no longer running.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import tarfile
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

from dlhub.common.config import EnvironmentsConfig
from dlhub.common.environments import BuildLog, Deadline, EnvironmentRecord, index_settings
from dlhub.common.errors import BuildFailed, EnvironmentUnavailable, RegistryError
from dlhub.common.logging import get_logger

log_ = get_logger(__name__)

IMAGE_REPOSITORY: Final = "dlhub-env"
ENV_PREFIX: Final = "/opt/env"
RUNTIME_MOUNT: Final = "/opt/dlhub-runtime"
BUILD_MOUNT: Final = "/run/dlhub-build"
LABEL_ENV: Final = "org.dlhub.environment"
LABEL_WORKER: Final = "org.dlhub.worker"
"""The worker process (instance id) an executor container belongs to."""
LABEL_HOME: Final = "org.dlhub.worker.home"
"""Digest of the worker's data directory: the containers a restarted worker may have to clean up."""
LABEL_BUILD: Final = "org.dlhub.build"
SOCKET_MOUNT: Final = "/run/dlhub-executor"
"""Where an executor container sees the directory of the worker's socket."""
SOCKET_NAME: Final = "executor.sock"


def engine_client(url: str | None, tls_cert_dir: Path | None) -> Any:
    """A ``docker.DockerClient`` for ``url`` (default: the environment's ``DOCKER_HOST`` and TLS settings),
    with mutual TLS from ``tls_cert_dir``, checked with a ping; ``EnvironmentUnavailable`` otherwise."""
    try:
        import docker
        from docker.tls import TLSConfig
    except ImportError as exc:
        raise EnvironmentUnavailable(
            "the docker backend needs the docker package (pip install docker)"
        ) from exc
    where = url or "the default Docker engine (DOCKER_HOST or its socket)"
    try:
        if url:
            tls: Any = False
            if tls_cert_dir is not None:
                tls = TLSConfig(
                    client_cert=(str(tls_cert_dir / "cert.pem"), str(tls_cert_dir / "key.pem")),
                    ca_cert=str(tls_cert_dir / "ca.pem"),
                    verify=True,
                )
            if tls:
                # requests lets REQUESTS_CA_BUNDLE (set on many machines) replace the engine's CA unless the
                # session ignores the environment, and "auto" asks the engine before that can be set: ask
                # with an unversioned request first, then make the client for the version it speaks.
                probe = docker.APIClient(base_url=url, tls=tls, timeout=120, version="1.24")
                probe.trust_env = False
                version = str(probe.version(api_version=False)["ApiVersion"])
                probe.close()
                client = docker.DockerClient(base_url=url, tls=tls, timeout=120, version=version)
                client.api.trust_env = False
            else:
                client = docker.DockerClient(base_url=url, timeout=120)
        else:
            client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:
        raise EnvironmentUnavailable(f"no Docker engine answers at {where}: {exc}") from exc
    return client


def tar_directory(source: Path) -> bytes:
    """``source``'s tree as a tar for ``put_archive``: owned by root, not writable by anyone else, no links
    out of it (symlinks are kept as links; the container resolves them inside itself)."""

    def owned_by_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mode &= 0o755
        return info

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(str(source), arcname=".", filter=owned_by_root)
    return buffer.getvalue()


def image_tag(record: EnvironmentRecord, config: EnvironmentsConfig) -> str:
    return environment_image(record.id, config)


def environment_image(environment_id: str, config: EnvironmentsConfig) -> str:
    """The tag of an environment's image (``[<docker_registry>/]dlhub-env:<id>``)."""
    local = f"{IMAGE_REPOSITORY}:{environment_id}"
    if config.docker_registry:
        return f"{config.docker_registry.rstrip('/')}/{local}"
    return local


def registry_of(reference: str) -> str:
    """The registry host part of an image reference (``127.0.0.1:5000/dlhub-env:x`` -> ``127.0.0.1:5000``)."""
    first, sep, _ = reference.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def split_tag(reference: str) -> tuple[str, str]:
    """``repository:tag`` -> (repository, tag); a port colon in the registry part is not a tag."""
    repository, sep, tag = reference.rpartition(":")
    if not sep or "/" in tag:
        return reference, "latest"
    return repository, tag


def home_label(data_dir: Path) -> str:
    return hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:24]


def install_script(has_conf: bool) -> str:
    """What the build container runs (from the temporary mount, so nothing of it stays in the image)."""
    conf = f"export PIP_CONFIG_FILE={BUILD_MOUNT}/pip.conf\n" if has_conf else "unset PIP_CONFIG_FILE\n"
    return (
        "set -eu\n"
        "export HOME=/tmp/dlhub-home PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1\n"
        f"{conf}"
        f"python3 -m venv {ENV_PREFIX}\n"
        f"{ENV_PREFIX}/bin/python -m pip install --no-cache-dir --no-input --require-hashes --no-deps"
        f" -r {BUILD_MOUNT}/requirements.lock\n"
    )


def pip_conf(index_url: str | None, extra_index_urls: list[str], has_ca: bool) -> str:
    lines = ["[global]"]
    if index_url:
        lines.append(f"index-url = {index_url}")
    if extra_index_urls:
        lines.append("extra-index-url = " + " ".join(extra_index_urls))
    if has_ca:
        lines.append(f"cert = {BUILD_MOUNT}/ca.pem")
    return "\n".join(lines) + "\n"


class DockerBackend:
    """Builds (and finds, and pulls) environment images; tells the worker how to run an executor in one."""

    def __init__(self, config: EnvironmentsConfig) -> None:
        self.config = config
        self._client: Any = None
        self._peer_uid: int | bool | None = False

    def client(self) -> Any:
        """The engine client, checked with a ping; ``EnvironmentUnavailable`` when there is no engine."""
        if self._client is not None:
            return self._client
        self._client = engine_client(self.config.docker_url, self.config.docker_tls_cert_dir)
        return self._client

    def peer_uid(self) -> int | None:
        """Blocking: the uid the worker sees an executor's socket connection come from, when it can tell: the
        numeric ``docker_user`` of an engine that remaps no user namespace (``None``: not checked)."""
        if self._peer_uid is not False:
            return self._peer_uid if isinstance(self._peer_uid, int) else None
        user = self.config.docker_user.partition(":")[0]
        expected: int | None = int(user) if user.isdigit() else None
        if expected is not None:
            try:
                options = [str(o) for o in self.client().info().get("SecurityOptions") or []]
            except Exception:
                options = ["unknown"]
            if any("userns" in o or "rootless" in o or o == "unknown" for o in options):
                expected = None
        self._peer_uid = expected
        return expected

    def image_exists(self, tag: str) -> bool:
        import docker.errors

        try:
            self.client().images.get(tag)
        except docker.errors.ImageNotFound:
            return False
        return True

    def _auth(self) -> dict[str, str] | None:
        username = self.config.docker_registry_username
        password = self.config.docker_registry_password
        if not username or password is None:
            return None
        return {"username": username, "password": password.get_secret_value()}

    def local_tag(self, record: EnvironmentRecord) -> str:
        """The tag executors run: the one the builder recorded, else this deployment's naming."""
        return record.image or image_tag(record, self.config)

    def publish(self, record: EnvironmentRecord, log: BuildLog, deadline: Deadline) -> tuple[str, str]:
        """Builder: make sure the engine has the image of ``record`` (already there, pulled from the registry,
        or built) and, with a registry, push it. Returns (tag, repository digest reference or "")."""
        tag = image_tag(record, self.config)
        if not self.image_exists(tag):
            if self.config.docker_registry:
                try:
                    self.pull(tag, tag)
                    log.line(f"pulled {tag} from the registry (built elsewhere)")
                except RegistryError as exc:
                    log.line(f"not taken from the registry ({exc.message}); building it")
                    self._build_image(record, tag, log, deadline)
            else:
                self._build_image(record, tag, log, deadline)
        if not self.config.docker_registry:
            return tag, ""
        digest = self.push(tag)
        log.line(f"pushed {tag} ({digest})")
        log_.info("environment image pushed", environment=record.id, image=tag, digest=digest)
        return tag, digest

    def ensure(self, record: EnvironmentRecord, log: BuildLog, deadline: Deadline) -> str:
        """Worker: the image of ``record`` exists in this engine; return its tag. A missing image is pulled by
        its recorded digest when a registry is configured; otherwise, or when the pull fails, it is rebuilt
        from the lock (never pushed: the registry holds what the builder published). Each path is logged."""
        tag = self.local_tag(record)
        if self.image_exists(tag):
            return tag
        reference = record.image_digest or (tag if registry_of(tag) != "docker.io" else "")
        if not self.config.docker_registry:
            reason = "no container registry is configured"
        elif not reference:
            reason = "the environment was not pushed to a registry (no image reference recorded)"
        else:
            try:
                self.pull(reference, tag)
            except RegistryError as exc:
                reason = f"the pull failed: {exc.message}"
            else:
                log.line(f"pulled {reference} as {tag}")
                log_.info(
                    "pulled a missing environment image from the registry",
                    environment=record.id,
                    image=reference,
                )
                return tag
        log_.warning(
            "rebuilding a missing environment image from its lock", environment=record.id, reason=reason
        )
        log.line(f"rebuilding {tag} from the lock: {reason}")
        try:
            self._build_image(record, tag, log, deadline)
        except BuildFailed as exc:
            raise BuildFailed(f"{exc.message} (rebuilding from the lock because {reason})") from exc
        return tag

    def _build_image(self, record: EnvironmentRecord, tag: str, log: BuildLog, deadline: Deadline) -> None:
        client = self.client()
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

    def push(self, tag: str) -> str:
        """Push ``tag``; return its repository digest reference (``repository@sha256:...``)."""
        import docker.errors

        repository, name = split_tag(tag)
        what = f"pushing {tag} to the registry {registry_of(tag)}"
        digest = ""
        try:
            lines = self.client().api.push(
                repository, tag=name, stream=True, decode=True, auth_config=self._auth()
            )
            for line in _checked(lines, what):
                aux = line.get("aux")
                if isinstance(aux, dict) and str(aux.get("Digest", "")).startswith("sha256:"):
                    digest = str(aux["Digest"])
        except docker.errors.APIError as exc:
            raise RegistryError(f"{what} failed: {_explain(exc)}") from exc
        if not digest:  # older engines: the digest is in the image's RepoDigests after the push
            found = self.client().images.get(tag).attrs.get("RepoDigests") or []
            digest = next((d.split("@", 1)[1] for d in found if d.startswith(repository + "@")), "")
        if not digest:
            raise RegistryError(f"{what}: the engine reported no digest")
        return f"{repository}@{digest}"

    def pull(self, reference: str, tag: str) -> None:
        """Pull ``reference`` (a tag or ``repository@sha256:...``) and tag the image as ``tag``."""
        import docker.errors

        what = f"pulling {reference} from the registry {registry_of(reference)}"
        client = self.client()
        if "@" in reference:
            repository, _, name = reference.partition("@")
        else:
            repository, name = split_tag(reference)
        try:
            lines = client.api.pull(repository, tag=name, stream=True, decode=True, auth_config=self._auth())
            for _ in _checked(lines, what):
                pass
            image = client.images.get(reference)
            if tag != reference:
                image.tag(*split_tag(tag))
        except docker.errors.APIError as exc:
            raise RegistryError(f"{what} failed: {_explain(exc)}") from exc

    def _build(
        self, record: EnvironmentRecord, tag: str, context: Path, log: BuildLog, deadline: Deadline
    ) -> None:
        """Install the lock in a build container of the base image, then commit it as ``tag``."""
        import docker.errors
        from docker.types import Mount

        index = index_settings(self.config)
        has_ca = index.ca_bundle is not None and index.ca_bundle.is_file()
        if has_ca and index.ca_bundle is not None:
            shutil.copyfile(index.ca_bundle, context / "ca.pem")
        has_conf = bool(index.index_url or index.extra_index_urls or has_ca)
        if has_conf:
            (context / "pip.conf").write_text(
                pip_conf(index.index_url, index.extra_index_urls, has_ca), encoding="utf-8"
            )
        (context / "requirements.lock").write_text(record.lock, encoding="utf-8")
        (context / "install.sh").write_text(install_script(has_conf), encoding="utf-8")
        context.chmod(0o755)
        for path in context.iterdir():
            path.chmod(0o644)
        client = self.client()
        base = client.images.get(self.config.docker_base_image)
        base_cmd = base.attrs.get("Config", {}).get("Cmd")
        container: Any = None
        killer: threading.Timer | None = None
        timed_out = threading.Event()
        try:
            # The context goes in through the engine API into an anonymous volume (never part of the commit,
            # removed with the container), so the engine need not see this builder's filesystem: a builder
            # in a container or on another host than its engine builds the same way.
            container = client.containers.create(
                self.config.docker_base_image,
                command=["sh", f"{BUILD_MOUNT}/install.sh"],
                mounts=[Mount(BUILD_MOUNT, None, type="volume")],
                tmpfs={"/tmp": "rw"},
                network_mode=self.config.docker_build_network,
                labels={LABEL_ENV: record.id, LABEL_BUILD: "1"},
                user="0:0",
            )

            def kill() -> None:
                timed_out.set()
                with contextlib.suppress(Exception):
                    container.kill()

            if not container.put_archive(BUILD_MOUNT, tar_directory(context)):
                raise BuildFailed("building the image failed: the engine refused the build files")
            killer = threading.Timer(deadline.remaining("building the image"), kill)
            killer.daemon = True
            killer.start()
            container.start()
            for chunk in container.logs(stream=True, follow=True):
                log.line(chunk.decode("utf-8", "replace"))
            status = container.wait()
            if timed_out.is_set():
                deadline.remaining("building the image")
                raise BuildFailed(
                    f"environment build timed out after {deadline.total:g} s (building the image)"
                )
            code = int(status.get("StatusCode", -1))
            if code != 0:
                tail = "\n".join(log.record.log[-40:])
                raise BuildFailed(f"building the image failed: the install exited with code {code}\n{tail}")
            repository, _, name = tag.rpartition(":")
            changes = [f"LABEL {LABEL_ENV}={record.id}"]
            changes.append(f"CMD {json.dumps(base_cmd)}" if base_cmd else 'CMD ["python3"]')
            container.commit(
                repository=repository, tag=name, changes=changes, message=f"dlhub environment {record.id}"
            )
        except docker.errors.DockerException as exc:
            raise BuildFailed(f"building the image failed: {exc}") from exc
        finally:
            if killer is not None:
                killer.cancel()
            if container is not None:
                with contextlib.suppress(Exception):
                    container.remove(force=True, v=True)

    def run_argv(
        self,
        record: EnvironmentRecord,
        *,
        runtime: Path,
        version_dir: Path,
        executor_args: list[str],
        name: str,
        labels: dict[str, str],
        socket_dir: Path | None = None,
    ) -> list[str]:
        """``docker run`` for one executor process of this environment serving one version; only that
        version's directory, the runtime and ``socket_dir`` (the directory of the worker's socket, which the
        executor connects to) are mounted, all read-only. Without ``socket_dir``, ``docker run -i``: the
        container's stdin/stdout are the protocol."""
        docker_cli = shutil.which("docker")
        if docker_cli is None:
            raise EnvironmentUnavailable("the docker CLI is not installed on this worker")
        host = self.cli_engine_args()
        served = str(version_dir.resolve())
        label_args: list[str] = []
        for key, value in {LABEL_ENV: record.id, **labels}.items():
            label_args += ["--label", f"{key}={value}"]
        config = self.config
        interactive = ["-i"]
        socket_args: list[str] = []
        mount_socket: list[str] = []
        if socket_dir is not None:
            interactive = []
            socket_args = ["--socket", f"{SOCKET_MOUNT}/{SOCKET_NAME}"]
            mount_socket = ["--volume", f"{socket_dir}:{SOCKET_MOUNT}:ro"]
        return [
            docker_cli, *host, "run", "--rm", *interactive, "--init",
            # The protocol on stdout is not a log: json-file would copy every response into a file that
            # grows for the container's life and costs dockerd CPU per request; attach works without it.
            "--log-driver", "none",
            "--name", name,
            *label_args,
            "--user", config.docker_user,
            "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges",
            "--read-only",
            "--tmpfs", f"/tmp:rw,nosuid,nodev,size={config.docker_tmpfs_bytes}",
            "--memory", str(config.docker_memory_bytes),
            "--memory-swap", str(config.docker_memory_bytes),
            "--cpus", f"{config.docker_cpus:g}",
            "--pids-limit", str(config.docker_pids_limit),
            "--network", "host" if record.network else "none",
            "--env", f"PYTHONPATH={RUNTIME_MOUNT}",
            "--env", "PYTHONDONTWRITEBYTECODE=1",
            "--env", "HOME=/tmp",
            "--volume", f"{runtime.resolve()}:{RUNTIME_MOUNT}:ro",
            "--volume", f"{served}:{served}:ro",
            *mount_socket,
            self.local_tag(record),
            f"{ENV_PREFIX}/bin/python", "-m", "dlhub.worker.executor", *executor_args, *socket_args,
        ]  # fmt: skip

    def cli_engine_args(self) -> list[str]:
        """The docker CLI's options reaching this backend's engine (none: the CLI's own defaults and env)."""
        if not self.config.docker_url:
            return []
        args = ["-H", self.config.docker_url]
        certs = self.config.docker_tls_cert_dir
        if certs is not None:
            args += ["--tlsverify", "--tlscacert", str(certs / "ca.pem")]
            args += ["--tlscert", str(certs / "cert.pem"), "--tlskey", str(certs / "key.pem")]
        return args

    def attached_spec(
        self,
        record: EnvironmentRecord,
        *,
        runtime: Path,
        version_dir: Path,
        executor_args: list[str],
        name: str,
        labels: dict[str, str],
    ) -> dict[str, Any]:
        """What ``dlhub.worker.docker_relay`` needs to run one executor of ``record`` with the ``copy``
        transfer: the same container as ``run_argv``'s (user, limits, read-only root, no capabilities, no
        network unless declared), with the runtime and the version directory copied into anonymous volumes
        at the paths the executor expects, and the protocol on the attach stream."""
        config = self.config
        served = str(version_dir.resolve())
        return {
            "docker_url": config.docker_url,
            "tls_cert_dir": str(config.docker_tls_cert_dir) if config.docker_tls_cert_dir else None,
            "name": name,
            "image": self.local_tag(record),
            "command": [f"{ENV_PREFIX}/bin/python", "-m", "dlhub.worker.executor", *executor_args],
            "user": config.docker_user,
            "labels": {LABEL_ENV: record.id, **labels},
            "env": {"PYTHONPATH": RUNTIME_MOUNT, "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/tmp"},
            "network": "host" if record.network else "none",
            "tmpfs": f"rw,nosuid,nodev,size={config.docker_tmpfs_bytes}",
            "memory_bytes": config.docker_memory_bytes,
            "nano_cpus": int(config.docker_cpus * 1e9),
            "pids_limit": config.docker_pids_limit,
            "copies": [[str(runtime.resolve()), RUNTIME_MOUNT], [served, served]],
        }

    def remove_container(self, name: str) -> None:
        """Kill and remove one executor container (blocking); one that is already gone is fine."""
        import docker.errors

        try:
            self.client().api.remove_container(name, force=True, v=True)  # v: its anonymous volumes too
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: its removal (--rm) is already under way
                raise

    def containers(self, labels: dict[str, str]) -> list[dict[str, Any]]:
        """Every container (running or not) with all of ``labels``, as the engine lists them."""
        filters = {"label": [f"{key}={value}" for key, value in labels.items()]}
        found: list[dict[str, Any]] = self.client().api.containers(all=True, filters=filters)
        return found


def _checked(lines: Iterable[Any], what: str) -> Iterable[dict[str, Any]]:
    """The decoded progress lines of a push or pull; an error line raises ``RegistryError``."""
    for line in lines:
        if not isinstance(line, dict):
            continue
        detail = line.get("errorDetail")
        message = line.get("error") or (detail.get("message") if isinstance(detail, dict) else None)
        if message:
            raise RegistryError(f"{what} failed: {message}")
        yield line


def _explain(exc: Any) -> str:
    explanation = getattr(exc, "explanation", None)
    return str(explanation or exc)
