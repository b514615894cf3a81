"""Parsl's SlurmProvider, made to see how its jobs ended on clusters without Slurm accounting.

Parsl asks ``sacct`` for job states and, where accounting is disabled, falls back to ``squeue``, which lists
no finished job: every job that leaves the queue then counts as ``COMPLETED``, whether it finished, failed
(a broken ``worker_init``, a crashing worker pool) or ran out of time. A block that fails at once is then
submitted again and again while its tasks wait forever. Here a job that left the queue is looked up with
``scontrol show job`` (slurmctld keeps finished jobs for ``MinJobAge``, 300 s by default), so a failed job
is ``FAILED`` and Parsl's block error handling fails the waiting tasks instead.

Imported only when ``[worker.parsl] provider = "slurm"`` (Parsl is an optional dependency).
"""

from __future__ import annotations

import re
from typing import Any, Final

from parsl.jobs.states import JobState, JobStatus
from parsl.providers import SlurmProvider
from parsl.providers.slurm.slurm import sacct_translate_table

from dlhub.common.logging import get_logger

log = get_logger(__name__)

FIELD: Final = re.compile(r"(\w+)=(\S*)")


class AccountingFreeSlurmProvider(SlurmProvider):  # type: ignore[misc]  # Parsl is untyped here
    """``SlurmProvider`` whose jobs that left ``squeue`` get their end state from ``scontrol``, polled every
    ``status_period_s`` (Parsl's is a fixed 60 s)."""

    def __init__(self, *, status_period_s: float = 60.0, **options: Any) -> None:
        super().__init__(**options)
        self.status_period_s = status_period_s

    @property
    def status_polling_interval(self) -> float:
        return self.status_period_s

    def _status(self) -> None:
        active = [job_id for job_id, job in self.resources.items() if not job["status"].terminal]
        super()._status()
        if self._cmd.startswith("sacct"):
            return  # accounting answers for finished jobs itself
        for job_id in active:
            if self.resources[job_id]["status"].state == JobState.COMPLETED:
                self._look_up_end(job_id)

    def _look_up_end(self, job_id: str) -> None:
        retcode, stdout, _ = self.execute_wait(f"scontrol show job --oneliner {job_id}")
        if retcode != 0:
            return  # slurmctld forgot the job already: it stays COMPLETED
        fields: dict[str, Any] = dict(FIELD.findall(stdout))
        slurm_state = str(fields.get("JobState", ""))
        state = sacct_translate_table.get(slurm_state, JobState.COMPLETED)
        if state == JobState.COMPLETED:
            return
        exit_code = str(fields.get("ExitCode", ""))
        log.warning("slurm block job ended", job_id=job_id, slurm_state=slurm_state, exit_code=exit_code)
        job = self.resources[job_id]
        job["status"] = JobStatus(
            state,
            message=f"Slurm job {job_id} ended {slurm_state} (exit code {exit_code})",
            exit_code=_exit_status(exit_code),
            stdout_path=job["job_stdout_path"],
            stderr_path=job["job_stderr_path"],
        )


def _exit_status(exit_code: str) -> int | None:
    """The script's exit status from Slurm's ``ExitCode=status:signal``."""
    status, _, _ = exit_code.partition(":")
    return int(status) if status.isdigit() else None
