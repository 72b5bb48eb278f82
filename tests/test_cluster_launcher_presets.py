"""The launcher presets: structured configs over hydra-submitit-launcher's schemas, under the
plugin's own names, composed without Hydra's deprecated automatic schema matching."""

from __future__ import annotations

import warnings

import pytest
from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf, SlurmQueueConf
from omegaconf import OmegaConf

from hydra_plugins.cnas_hpc_launcher._presets import ClusterLocalConf, ClusterSlurmConf

LAUNCHERS = "hydra_plugins.cnas_hpc_launcher.cluster_launcher"


def launcher(name: str, *overrides: str) -> dict[str, object]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a schema-matching (or any) warning fails the test
        with initialize_config_module("cnas_hpc.configs", version_base="1.3"):
            cfg = compose(
                "search", overrides=[f"hydra/launcher={name}", *overrides], return_hydra_config=True
            )
    node = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert isinstance(node, dict)
    return node  # type: ignore[return-value]


def test_the_gpu_preset_keeps_the_plugin_s_name_and_carries_our_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CNAS_SLURM_PARTITION", raising=False)
    slurm = launcher("submitit_slurm")
    assert slurm["_target_"] == f"{LAUNCHERS}.ClusterSlurmLauncher"
    assert (slurm["gpus_per_node"], slurm["tasks_per_node"], slurm["cpus_per_task"]) == (1, 1, 8)
    assert (slurm["timeout_min"], slurm["signal_delay_s"], slurm["max_num_timeout"]) == (
        1440,
        180,
        3,
    )
    assert slurm["partition"] is None and slurm["array_parallelism"] == 64
    # Every field of the plugin's schema is there (ours extends it; nothing is lost).
    assert set(SlurmQueueConf.__dataclass_fields__) <= set(slurm)
    monkeypatch.setenv("CNAS_SLURM_PARTITION", "gpu-a100")
    assert launcher("submitit_slurm")["partition"] == "gpu-a100"


def test_the_cpu_preset_extends_the_gpu_one_through_its_defaults_list() -> None:
    cpu = launcher("slurm_cpu")
    assert cpu["_target_"] == f"{LAUNCHERS}.ClusterSlurmLauncher"
    assert (cpu["partition"], cpu["cpus_per_task"], cpu["gpus_per_node"]) == ("debug", 1, None)
    assert cpu["additional_parameters"] == {"mem": "1200M"}
    assert cpu["max_num_timeout"] == 3  # inherited from submitit_slurm


def test_the_local_preset_and_a_typed_override() -> None:
    local = launcher("submitit_local")
    assert local["_target_"] == f"{LAUNCHERS}.ClusterLocalLauncher"
    assert set(LocalQueueConf.__dataclass_fields__) <= set(local)
    # The schema still types every key: a wrong type is refused when composed.
    with pytest.raises(Exception, match="timeout_min"):
        launcher("submitit_slurm", "hydra.launcher.timeout_min=soon")


def test_our_presets_replace_the_plugin_s_entries_in_the_config_store() -> None:
    launcher("submitit_slurm")  # composing registers them (after Hydra's plugin scan)
    group = ConfigStore.instance().repo["hydra"]["launcher"]
    assert OmegaConf.get_type(group["submitit_slurm.yaml"].node) is ClusterSlurmConf
    assert OmegaConf.get_type(group["submitit_local.yaml"].node) is ClusterLocalConf
