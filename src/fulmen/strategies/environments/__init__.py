"""Cluster environments: who started the processes and where rank zero listens."""

from fulmen.strategies.environments.cluster_environment import ClusterEnvironment
from fulmen.strategies.environments.kubeflow import KubeflowEnvironment
from fulmen.strategies.environments.lightning import LightningEnvironment
from fulmen.strategies.environments.lsf import LSFEnvironment
from fulmen.strategies.environments.slurm import SLURMEnvironment
from fulmen.strategies.environments.torchelastic import TorchElasticEnvironment

__all__ = [
    "ClusterEnvironment",
    "KubeflowEnvironment",
    "LSFEnvironment",
    "LightningEnvironment",
    "SLURMEnvironment",
    "TorchElasticEnvironment",
]


def detect_environment() -> ClusterEnvironment:
    """The environment this process runs under; externally launched ones win over the default."""
    for env_type in (TorchElasticEnvironment, SLURMEnvironment, KubeflowEnvironment, LSFEnvironment):
        if env_type.detect():
            return env_type()
    return LightningEnvironment()
