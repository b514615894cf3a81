"""Image exports: a docker-backend version as a self-contained image, handed out as a ``docker save`` tarball.

The image is the version's environment image (``[<docker_registry>/]dlhub-env:<id>`` on the engine the
deployment configures, ``environments.docker_url``; pulled from ``environments.docker_registry`` when the
engine lacks it) extended, in ``/servable``, by what the export archive runs the version with: ``files/``,
``dlhub.json``, the lock, ``run.py`` and ``runtime/`` (the executor's loader). It is built with the docker SDK
from a context holding only those files and a Dockerfile of ``LABEL``, ``ENV``, ``COPY``, ``WORKDIR``,
``USER`` and ``ENTRYPOINT``: no ``RUN``, no build arguments, no network. It runs as ``65534:65534``; its entry
point is ``run.py``, so ``docker run --rm -i --network none <tag> '<json input>'`` prints the output as JSON
(``-`` reads the input from stdin; ``--method``/``--parameters`` as with the archive).

The derived image is tagged ``dlhub-export:<owner>.<name>.<version>-<digest>``; the digest covers the
environment image's id, the Dockerfile and every copied file, so exporting a version again reuses its image
(and a changed runtime or environment image gives a new tag, the older ones of the version are removed).
``docker save`` of it is streamed chunk by chunk; the registry never holds the image in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import posixpath
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from dlhub.common.config import EnvironmentsConfig
from dlhub.common.docker_environments import ENV_PREFIX, LABEL_ENV, DockerBackend, environment_image
from dlhub.common.errors import EnvironmentUnavailable
from dlhub.registry.export import servable_members
from dlhub.registry.store import StoredBuild, VersionRecord

EXPORT_REPOSITORY: Final = "dlhub-export"
LABEL_EXPORT: Final = "org.dlhub.export"
"""The version (``owner/name@version``) a derived image runs."""
IMAGE_USER: Final = "65534:65534"
IMAGE_DIR: Final = "/servable"
CHUNK_BYTES: Final = 1 << 20
_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def image_filename(record: VersionRecord) -> str:
    return f"{record.owner}-{record.name}-{record.version}.image.tar"


def image_dockerfile(base: str, record: VersionRecord, environment_id: str) -> str:
    return (
        f"# {record.label} without DLHub: docker run --rm -i --network none <image> '<json input>'\n"
        f"FROM {base}\n"
        f"LABEL {LABEL_EXPORT}={json.dumps(record.label)} {LABEL_ENV}={json.dumps(environment_id)}\n"
        "ENV PYTHONDONTWRITEBYTECODE=1 HOME=/tmp\n"
        f"COPY servable {IMAGE_DIR}\n"
        f"WORKDIR {IMAGE_DIR}\n"
        f"USER {IMAGE_USER}\n"
        f'ENTRYPOINT ["{ENV_PREFIX}/bin/python", "{IMAGE_DIR}/run.py"]\n'
    )


def context_digest(base_id: str, dockerfile: str, members: list[tuple[str, bytes, int]]) -> str:
    digest = hashlib.sha256()
    digest.update(base_id.encode() + b"\0" + dockerfile.encode() + b"\0")
    for path, data, mode in members:
        digest.update(f"{path}\0{mode:o}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def export_tag(record: VersionRecord, digest: str) -> str:
    """``dlhub-export:<owner>.<name>.<version>-<digest prefix>`` (a valid tag: at most 128 characters)."""
    suffix = f".{record.version}-{digest[:12]}"
    prefix = _TAG_UNSAFE.sub("_", f"{record.owner}.{record.name}")[: 128 - len(suffix)]
    return f"{EXPORT_REPOSITORY}:{prefix}{suffix}"


def build_context(dockerfile: str, members: list[tuple[str, bytes, int]]) -> bytes:
    """The build context: the Dockerfile and ``servable/`` (directories 0755, files 0644 or 0755)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:

        def add(name: str, data: bytes, mode: int) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))

        add("Dockerfile", dockerfile.encode(), 0o644)
        folders = {"servable"}
        for path, _, _ in members:
            parent = posixpath.dirname(f"servable/{path}")
            while parent and parent not in folders:
                folders.add(parent)
                parent = posixpath.dirname(parent)
        for folder in sorted(folders):
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for path, data, mode in members:
            add(f"servable/{path}", data, mode)
    return buffer.getvalue()


@dataclass
class ImageExport:
    """A derived image ready to be saved; ``chunks`` streams ``docker save`` of it (blocking calls)."""

    tag: str
    client: Any
    where: str
    _chunks: Iterator[bytes] | None = field(default=None, repr=False)

    def next_chunk(self) -> bytes:
        """The next chunk of the tarball (b"" at its end)."""
        try:
            if self._chunks is None:
                self._chunks = iter(self.client.api.get_image(self.tag, chunk_size=CHUNK_BYTES))
            return next(self._chunks, b"")
        except Exception as exc:
            raise EnvironmentUnavailable(f"docker save of {self.tag} at {self.where} failed: {exc}") from exc

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


class ImageExports:
    """Builds (or finds) derived images on the deployment's engine, one build per version at a time."""

    def __init__(self, config: EnvironmentsConfig) -> None:
        self.config = config
        self._locks: dict[str, asyncio.Lock] = {}

    @property
    def where(self) -> str:
        return self.config.docker_url or "the default Docker socket"

    async def prepare(self, record: VersionRecord, build: StoredBuild, package: bytes) -> ImageExport:
        members = await asyncio.to_thread(servable_members, record, build, package)
        lock = self._locks.setdefault(record.label, asyncio.Lock())
        async with lock:
            client = await asyncio.to_thread(self._client, build)
            try:
                tag = await asyncio.to_thread(self._ensure, client, record, build, members)
            except BaseException:
                with contextlib.suppress(Exception):
                    client.close()
                raise
        return ImageExport(tag=tag, client=client, where=self.where)

    def pull_hint(self, build: StoredBuild) -> str:
        if not self.config.docker_registry:
            return ""
        reference = environment_image(build.environment, self.config)
        return (
            f"; the version's environment image was pushed to {reference} (docker pull {reference}): the "
            "export archive's files and run.py run in it"
        )

    def _client(self, build: StoredBuild) -> Any:
        try:
            return DockerBackend(self.config).client()
        except EnvironmentUnavailable as exc:
            raise EnvironmentUnavailable(
                f"image exports need a Docker engine: {exc}{self.pull_hint(build)}"
            ) from exc

    def _ensure(
        self, client: Any, record: VersionRecord, build: StoredBuild, members: list[tuple[str, bytes, int]]
    ) -> str:
        """The tag of the derived image of ``record``, built unless the engine has it."""
        import docker.errors

        base = environment_image(build.environment, self.config)
        try:
            try:
                base_image = client.images.get(base)
            except docker.errors.ImageNotFound:
                if not self.config.docker_registry:
                    raise EnvironmentUnavailable(
                        f"the environment image {base} of {record.label} is not on the Docker engine at "
                        f"{self.where} (publish the version again to rebuild it)"
                    ) from None
                client.images.pull(base)
                base_image = client.images.get(base)
            dockerfile = image_dockerfile(base, record, build.environment)
            tag = export_tag(record, context_digest(str(base_image.id), dockerfile, members))
            with contextlib.suppress(docker.errors.ImageNotFound):
                client.images.get(tag)
                return tag
            client.images.build(
                fileobj=io.BytesIO(build_context(dockerfile, members)),
                custom_context=True,
                tag=tag,
                network_mode="none",
                pull=False,
                rm=True,
                forcerm=True,
            )
            self._remove_older(client, record, tag)
            return tag
        except docker.errors.BuildError as exc:
            raise EnvironmentUnavailable(f"building the image of {record.label} failed: {exc.msg}") from exc
        except (docker.errors.DockerException, OSError) as exc:
            raise EnvironmentUnavailable(
                f"the Docker engine at {self.where} failed: {exc}{self.pull_hint(build)}"
            ) from exc

    @staticmethod
    def _remove_older(client: Any, record: VersionRecord, tag: str) -> None:
        for image in client.images.list(filters={"label": f"{LABEL_EXPORT}={record.label}"}):
            for old in image.tags:
                if old != tag and old.startswith(f"{EXPORT_REPOSITORY}:"):
                    with contextlib.suppress(Exception):
                        client.images.remove(old)
