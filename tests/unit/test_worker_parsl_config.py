"""Parsl provider configurations and the advertised capacity, in-process (split from
tests/stack/test_worker_parsl.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from dlhub.common.config import ParslConfig, load_settings
from dlhub.worker.parsl_backend import ParslBackend, parsl_config
from dlhub.worker.service import WorkerService, make_backend


def test_local_provider_config_runs_this_interpreter_on_loopback(tmp_path: Path) -> None:
    from parsl.providers import LocalProvider

    config = parsl_config(ParslConfig(workers_per_node=3), run_dir=str(tmp_path))
    (executor,) = config.executors
    assert isinstance(executor.provider, LocalProvider)
    assert executor.label == "dlhub" and executor.max_workers_per_node == 3
    assert executor.address == "127.0.0.1" and executor.encrypted
    assert executor.launch_cmd.startswith(f"{sys.executable} -m parsl.executors.high_throughput.")
    assert config.run_dir == str(tmp_path) and config.initialize_logging is False


def test_slurm_provider_config(tmp_path: Path) -> None:
    from parsl.launchers import SrunLauncher
    from parsl.providers import SlurmProvider

    from dlhub.worker.parsl_slurm import AccountingFreeSlurmProvider

    settings = load_settings(
        worker={
            "backend": "parsl",
            "parsl": {
                "provider": "slurm", "partition": "debug", "account": "sci42", "qos": "normal",
                "walltime_s": 5400, "nodes_per_block": 2, "min_blocks": 0, "max_blocks": 4,
                "workers_per_node": 8, "scheduler_options": "#SBATCH --constraint=cpu",
                "worker_init": "source ~/dlhub-env/bin/activate", "launcher": "srun",
                "parallelism": 0.5, "max_idletime_s": 30, "strategy_period_s": 2, "exclusive": False,
                "job_status_period_s": 10,
            },
        }
    )  # fmt: skip
    config = parsl_config(settings.worker.parsl, run_dir=str(tmp_path))
    assert (config.max_idletime, config.strategy_period) == (30, 2)
    (executor,) = config.executors
    provider = executor.provider
    assert isinstance(provider, SlurmProvider) and isinstance(provider.launcher, SrunLauncher)
    # Finished jobs' states come from scontrol where Slurm has no accounting (dlhub.worker.parsl_slurm).
    assert isinstance(provider, AccountingFreeSlurmProvider) and provider.status_polling_interval == 10
    assert provider.parallelism == 0.5 and "--exclusive" not in provider.scheduler_options
    assert (provider.partition, provider.account, provider.qos) == ("debug", "sci42", "normal")
    assert provider.walltime == "01:30:00" and provider.nodes_per_block == 2
    assert (provider.init_blocks, provider.min_blocks, provider.max_blocks) == (1, 0, 4)
    assert provider.scheduler_options.startswith("#SBATCH --constraint=cpu\n")
    assert provider.worker_init.startswith("source ~/dlhub-env/bin/activate")
    assert executor.max_workers_per_node == 8 and executor.address is None  # auto-detected on clusters
    assert executor.launch_cmd.startswith("process_worker_pool.py")


def test_pbs_provider_config(tmp_path: Path) -> None:
    from parsl.launchers import MpiExecLauncher
    from parsl.providers import PBSProProvider

    config = ParslConfig(
        provider="pbs", queue="workq", account="sci42", walltime_s=600, cpus_per_node=64,
        select_options="ngpus=4", scheduler_options="#PBS -l filesystems=home", launcher="mpiexec",
        address="10.0.0.5",
    )  # fmt: skip
    (executor,) = parsl_config(config, run_dir=str(tmp_path)).executors
    provider = executor.provider
    assert isinstance(provider, PBSProProvider) and isinstance(provider.launcher, MpiExecLauncher)
    assert (provider.queue, provider.account, provider.walltime) == ("workq", "sci42", "00:10:00")
    assert provider.cpus_per_node == 64 and provider.select_options == "ngpus=4"
    assert provider.scheduler_options == "#PBS -l filesystems=home"
    assert executor.address == "10.0.0.5"


KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: u, user: {token: not-a-secret}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


def test_kubernetes_provider_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kube_config = pytest.importorskip(
        "kubernetes.config.kube_config", reason="the kubernetes provider needs the kubernetes client package"
    )
    from parsl.providers import KubernetesProvider

    # The provider reads a kube config when constructed (it does not connect): give it a local one. The
    # client read $KUBECONFIG when it was imported, so point its default location at the file instead.
    (tmp_path / "kubeconfig").write_text(KUBECONFIG)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "kubeconfig"))
    config = ParslConfig(
        provider="kubernetes", image="registry.example/dlhub-worker:1", namespace="dlhub", pod_max_cpu=4,
        pod_max_mem="8Gi", max_blocks=5, worker_init="pip list", launcher="srun",
    )  # fmt: skip
    (executor,) = parsl_config(config, run_dir=str(tmp_path)).executors
    provider = executor.provider
    assert isinstance(provider, KubernetesProvider)
    assert (provider.image, provider.namespace) == ("registry.example/dlhub-worker:1", "dlhub")
    assert (provider.max_cpu, provider.max_mem, provider.max_blocks) == (4, "8Gi", 5)
    assert provider.worker_init == "pip list"


def test_kubernetes_without_an_image_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"worker\.parsl\.image"):
        parsl_config(ParslConfig(provider="kubernetes"), run_dir=str(tmp_path))


def test_parsl_worker_count_sets_the_advertised_capacity() -> None:
    settings = load_settings(
        worker={"backend": "parsl", "tasks_per_process": 2, "batch_capacity": 3,
                "parsl": {"workers_per_node": 4, "nodes_per_block": 2, "max_blocks": 3}},
    )  # fmt: skip
    backend = make_backend(settings)
    assert isinstance(backend, ParslBackend) and backend.processes == 24
    assert WorkerService(settings, pool=backend).capacity == 24 * 2 + 3
