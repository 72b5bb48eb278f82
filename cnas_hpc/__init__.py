"""cnas_hpc: label-free (contrastive) neural architecture search on SLURM clusters."""

from __future__ import annotations

__version__ = "0.1.0"
