"""The contrastive losses of the proxy task by config name (``train.loss``), behind one contract.

A trainer never branches on the loss: it builds the registered one with :func:`build_loss` and
calls it. Every registered loss is a :class:`ContrastiveLoss`:

* ``loss(z1, z2, index)`` takes ``z1``, ``z2``: ``[B, D]`` float projections of the two views
  of THIS rank's ``B`` images (row ``i`` of both is the same image; unnormalised, any float
  dtype, the trainer passes float32) and ``index``: ``[B]`` int64 rows of those images in the
  training split, on the projections' device, distinct within the global batch and valid by
  construction (a loss does not check them: a check would read them back from the device).
  It returns a scalar tensor (the inputs' dtype, on their device) that gradients flow through
  into ``z1`` and ``z2``. Every loss here is a mean negative log-probability, hence ``>= 0``.
  Under a process group every rank calls it with the same ``B`` (negatives or state updates
  may come from all ranks); in one process the same code serves.
* ``state_dict()`` / ``load_state_dict(state)``: the loss's own training state, which the
  trainer saves in its checkpoint (``ContrastiveStep.state_dict()["extra"]``) and restores on
  resume. A STATELESS loss returns ``{}`` and ignores what it is given; a STATEFUL loss owns
  its state (the memory bank, the generator of its negatives), updates it inside ``__call__``
  and must come back bit-identical from its ``state_dict``. As with torch's ``state_dict``,
  the returned tensors may alias the live state (a CPU bank is not copied): a caller that keeps
  a snapshot while training goes on copies it (a checkpoint is written at once).

Stateless: ``ntxent``. Stateful: ``membank_nce`` (the bank and its negatives' generator).

``config.train.LOSSES`` lists the names ``train.loss`` accepts; the config floor cannot import
this one (see ARCHITECTURE.md), so ``tests/test_ssl_loss_contract.py`` checks that the two name
the same losses, and runs the contract over every registered loss.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from cnas_hpc.config.train import TrainConfig
from cnas_hpc.ssl.losses import MemoryBankNCE, nt_xent_loss


@dataclass(frozen=True)
class LossSetup:
    """Everything a registered loss may be built from.

    Attributes:
        train: the ``train`` section (temperature, memory-bank size and momentum, ...).
        n_train: images in the training split (``index`` lies in ``[0, n_train)``).
        dim: projection dimension ``D``.
        seed: the candidate's seed (a stateful loss seeds its state from it).
        device: where the projections live; a stateful loss keeps its state there.
    """

    train: TrainConfig
    n_train: int
    dim: int
    seed: int
    device: torch.device


class ContrastiveLoss(ABC):
    """The contract of a registered loss (see the module docstring)."""

    #: Whether the loss carries training state that a checkpoint must hold.
    stateful: ClassVar[bool]

    @abstractmethod
    def __call__(self, z1: torch.Tensor, z2: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The loss of this rank's slice: a scalar tensor, ``>= 0``, differentiable in z1, z2."""

    def state_dict(self) -> dict[str, Any]:
        """The loss's training state for a checkpoint; ``{}`` when stateless."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:  # noqa: B027 (a default)
        """Restore :meth:`state_dict`; a stateless loss has nothing to restore."""


LossFactory = Callable[[LossSetup], ContrastiveLoss]

_REGISTRY: dict[str, LossFactory] = {}


def register_loss(name: str) -> Callable[[LossFactory], LossFactory]:
    """Register a loss factory (usually a :class:`ContrastiveLoss` subclass) under ``name``.

    Raises:
        ValueError: ``name`` is already registered.
    """

    def add(factory: LossFactory) -> LossFactory:
        if name in _REGISTRY:
            raise ValueError(f"a loss named {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return add


def loss_names() -> tuple[str, ...]:
    """The registered names, in registration order."""
    return tuple(_REGISTRY)


def build_loss(name: str, setup: LossSetup) -> ContrastiveLoss:
    """A fresh instance of the loss registered as ``name`` (its state, if any, on the device).

    Raises:
        ValueError: no loss is registered as ``name``.
    """
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"no loss registered as {name!r}; registered: {', '.join(_REGISTRY)}"
        ) from None
    return factory(setup)


@register_loss("ntxent")
class NTXent(ContrastiveLoss):
    """SimCLR's NT-Xent (:func:`~cnas_hpc.ssl.losses.nt_xent_loss`), negatives from every rank.

    Stateless; ``index`` is not used.
    """

    stateful = False

    def __init__(self, setup: LossSetup) -> None:
        self.temperature = setup.train.temperature

    def __call__(self, z1: torch.Tensor, z2: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """NT-Xent of the global batch's negatives, averaged over this rank's anchors."""
        return nt_xent_loss(z1, z2, self.temperature)


@register_loss("membank_nce")
class MemoryBank(ContrastiveLoss):
    """The reference code's memory-bank NCE (:class:`~cnas_hpc.ssl.losses.MemoryBankNCE`).

    Stateful: it owns the bank (one row per training image, seeded by ``setup.seed``, on
    ``setup.device``) and the generator of its negatives, and updates the bank rows of the
    global batch on every call. ``z1`` is the image term, ``z2`` the view term.
    """

    stateful = True

    def __init__(self, setup: LossSetup) -> None:
        cfg = setup.train
        self.module = MemoryBankNCE(
            setup.n_train,
            setup.dim,
            temperature=cfg.temperature,
            num_negatives=cfg.membank_negatives,
            momentum=cfg.membank_momentum,
            seed=setup.seed,
        ).to(setup.device)

    def __call__(self, z1: torch.Tensor, z2: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The loss against the bank, then the bank update (indices valid by construction)."""
        return self.module(z1, z2, index, check_index=False)

    @property
    def bank(self) -> torch.Tensor:
        """The bank itself (``[n_train, D]`` unit rows, on the device; updated in place)."""
        return self.module.bank

    def state_dict(self) -> dict[str, Any]:
        """``bank`` (a CPU copy) and ``negatives_rng`` (the negatives generator's state)."""
        return {
            "bank": self.module.bank.detach().cpu(),
            "negatives_rng": self.module.negatives_generator().get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; a state without a bank (an older checkpoint) keeps the
        seeded initial bank and generator."""
        if "bank" in state:
            self.module.bank.copy_(state["bank"].to(self.module.bank.device))
            self.module.negatives_generator().set_state(state["negatives_rng"])
