"""Self-supervised pieces of the proxy task: batched augmentations and contrastive losses.

Augmentations (:mod:`cnas_hpc.ssl.augment`) live apart from the losses
(:mod:`cnas_hpc.ssl.losses`) and from the models, as in MoCo's ``TwoCropsTransform``.
"""

from __future__ import annotations

from cnas_hpc.config.augment import AugmentConfig
from cnas_hpc.ssl.augment import BatchAugment
from cnas_hpc.ssl.losses import MemoryBankNCE, nt_xent_loss

__all__ = ["AugmentConfig", "BatchAugment", "MemoryBankNCE", "nt_xent_loss"]
