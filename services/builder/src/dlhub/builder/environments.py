"""The builder's environment step: plan, lock and build a version's environment before it is published.

States (``BuildRecord``): queued -> resolving (uv's resolver makes the lock) -> installing (venv or image)
-> ready, or failed with the resolver's or installer's own message, which also fails the version. A version
published here always has its environment built; a docker image is also pushed to ``docker_registry`` when
one is configured (a failed push fails the version with ``registry_error``), and its tag and repository
digest are recorded. A worker that lacks the environment pulls the image by that digest, or rebuilds the
environment from the lock.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dlhub.common.config import DLHubSettings, EnvironmentsConfig
from dlhub.common.environments import (
    BuildLog,
    Deadline,
    EnvironmentRecord,
    VenvBackend,
    environment_id,
    lock,
    plan,
)
from dlhub.common.logging import get_logger

log = get_logger(__name__)


class EnvironmentBuilder:
    def __init__(self, config: EnvironmentsConfig, root: Path) -> None:
        self.config = config
        self.root = root
        self.venv = VenvBackend(config, root)
        self._docker: Any = None

    @classmethod
    def from_settings(cls, settings: DLHubSettings) -> EnvironmentBuilder:
        return cls(settings.environments, settings.environments_dir)

    def docker(self) -> Any:
        if self._docker is None:
            from dlhub.common.docker_environments import DockerBackend

            self._docker = DockerBackend(self.config)
        return self._docker

    def prepare(self, metadata: Mapping[str, Any], files_dir: Path, build_log: BuildLog) -> EnvironmentRecord:
        """Decide where the version runs; for its own environment, lock it and build it (blocking)."""
        decided = plan(metadata, files_dir, self.config)
        if decided.shared is not None:
            build_log.line(f"shared worker environment: {decided.shared.reason}")
            if decided.shared.requirements:
                log.info("servable runs in the worker environment", reason=decided.shared.reason)
            return decided.shared
        deadline = Deadline(self.config.build_timeout_s)
        build_log.set_state("resolving")
        build_log.line("requirements: " + ", ".join(decided.requirements))
        lock_text = lock(decided.requirements, decided.python, self.config, build_log, deadline)
        base_image = self.config.docker_base_image if decided.backend == "docker" else ""
        record = EnvironmentRecord(
            kind="isolated",
            backend=decided.backend,
            id=environment_id(decided.backend, decided.python, lock_text, base_image),
            python=decided.python,
            requirements=decided.requirements,
            lock=lock_text,
            network=decided.network,
            base_image=base_image,
        )
        build_log.record.environment = record.id
        build_log.set_state("installing")
        if record.backend == "docker":
            record.image, record.image_digest = self.docker().publish(record, build_log, deadline)
        else:
            self.venv.ensure(record, build_log, deadline)
        log.info("environment ready", environment=record.id, backend=record.backend)
        return record
