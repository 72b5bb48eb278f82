"""Hydra launchers for SLURM clusters, on top of hydra-submitit-launcher.

The presets are YAML files in ``configs/hydra/launcher/`` named like the plugin's structured
configs (``submitit_slurm``, ``submitit_local``), so Hydra validates them against the plugin's
schema and ``hydra/launcher=submitit_slurm`` gives our GPU-cluster defaults; they point
``_target_`` at the launchers below. One multirun submits ONE SLURM array
(``executor.map_array``) whose tasks are the workers.
"""

from __future__ import annotations

import warnings

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher

# Same-named YAML over a plugin schema is Hydra's "automatic schema matching": supported by the
# pinned hydra-core 1.3, which warns about it on every run. Here it is deliberate.
warnings.filterwarnings("ignore", message=r"(?s).*is validated against ConfigStore schema")


class ClusterSlurmLauncher(SlurmLauncher):
    """The plugin's SLURM launcher; one array per multirun, every task one worker."""


class ClusterLocalLauncher(LocalLauncher):
    """The plugin's local (subprocess) launcher, for trying the multirun path without SLURM."""
