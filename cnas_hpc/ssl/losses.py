"""Contrastive losses: SimCLR's NT-Xent and the reference code's memory-bank NCE.

Both take unnormalised projections (any float dtype; compute in float32 or wider) and are
distribution-aware through :mod:`cnas_hpc.distributed.collectives`: with a process group, every rank
passes its slice of the global batch and the negatives come from all ranks. In a single process
the collectives are identities, so the same code serves 1 and N ranks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnas_hpc.distributed.collectives import all_gather_nograd, gather_with_grad, get_rank


def _check_pair(z1: torch.Tensor, z2: torch.Tensor, name1: str, name2: str) -> None:
    """Validate two ``[B, D]`` projection batches.

    Raises:
        ValueError: Not 2-D, shapes differ, empty, or not floating point.
    """
    for name, z in ((name1, z1), (name2, z2)):
        if z.dim() != 2:
            raise ValueError(f"{name} must be [batch, dim], got shape {tuple(z.shape)}")
        if not z.is_floating_point():
            raise ValueError(f"{name} must be floating point, got {z.dtype}")
    if z1.shape != z2.shape:
        raise ValueError(
            f"{name1} and {name2} must have the same shape, got {tuple(z1.shape)} "
            f"and {tuple(z2.shape)}"
        )
    if z1.shape[0] < 1 or z1.shape[1] < 1:
        raise ValueError(f"{name1} is empty: shape {tuple(z1.shape)}")


def nt_xent_loss(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5, *, gather: bool = True
) -> torch.Tensor:
    """SimCLR's normalized-temperature cross entropy over the (global) batch.

    The ``2N`` projections of the global batch (``N = W * B`` images, two views each) are
    L2-normalised; for every one of the ``2B`` LOCAL anchors the positive is the other view of the
    same image and the negatives are the other ``2N - 2`` projections (all ranks', gathered with
    :func:`~cnas_hpc.distributed.collectives.gather_with_grad`). The loss is the mean over local
    anchors of ``-log softmax(cos / temperature)`` at the positive. Averaging it over ranks (as DDP
    averages gradients) gives exactly the single-process loss of the global batch.

    Args:
        z1: ``[B, D]`` projections of the first view of this rank's ``B`` images.
        z2: ``[B, D]`` projections of the second view, row ``i`` the same image as ``z1[i]``.
        temperature: Softmax temperature, ``> 0``.
        gather: Draw negatives from every rank when a process group exists; ``False`` keeps
            the loss local (every rank then needs ``B >= 1`` images and gets only local
            negatives).

    Returns:
        A scalar tensor (dtype of the inputs) on the inputs' device.

    Raises:
        ValueError: Shapes are not two equal ``[B, D]`` float batches, or ``temperature <= 0``.
    """
    _check_pair(z1, z2, "z1", "z2")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    batch = z1.shape[0]
    h1 = F.normalize(z1, dim=1)
    h2 = F.normalize(z2, dim=1)
    offset = 0
    if gather:
        h1 = gather_with_grad(h1)
        h2 = gather_with_grad(h2)
        offset = get_rank() * batch  # this rank's rows in the gathered batch
    total = h1.shape[0]  # N images over all ranks
    candidates = torch.cat([h1, h2], dim=0)  # [2N, D]: view 1 of all images, then view 2
    local = torch.arange(offset, offset + batch, device=z1.device)
    anchor_rows = torch.cat([local, local + total])  # [2B] rows of the local anchors
    anchors = candidates[anchor_rows]
    logits = anchors @ candidates.T / temperature  # [2B, 2N]
    # An anchor is never its own negative: mask its self-similarity out of the softmax.
    self_mask = torch.zeros_like(logits, dtype=torch.bool)
    self_mask[torch.arange(2 * batch, device=z1.device), anchor_rows] = True
    logits = logits.masked_fill(self_mask, float("-inf"))
    positives = torch.cat([local + total, local])  # the other view of the same image
    return F.cross_entropy(logits, positives)


class MemoryBankNCE(nn.Module):
    """PIRL-style NCE against a memory bank, as the CSNAS reference code trains its proxies.

    The bank holds one unit vector per training image (``bank[i]``, the slowly moving average
    of image ``i``'s embeddings). For a batch with image indices ``index``::

        loss = image_weight * NCE(m, z_view) + (1 - image_weight) * NCE(m, z_image)

    where ``m = bank[index]`` and ``NCE(m, z)`` is the InfoNCE cross entropy of the query
    ``z`` (L2-normalised) whose positive is ``m`` and whose negatives are ``num_negatives``
    bank entries, with cosine similarities divided by ``temperature``. Afterwards, without
    gradient, ``bank[index] = normalise(momentum * bank[index] + (1 - momentum) * ẑ_image)``
    with ``ẑ_image`` the normalised image embedding.

    Negatives are drawn uniformly WITH replacement from the whole bank, independently per
    anchor, excluding nothing: an anchor may occasionally meet its own entry or a duplicate,
    which with thousands of images is rare and unbiased. The same negatives serve both terms.

    Differences from the reference code: the whole batch is scored at once (one gather of
    ``[B, K, D]`` negatives and batched dot products) instead of a Python loop per sample,
    the bank lives on the training device and is updated in place, and the bank update is
    made identical on every rank by gathering ``z_image`` and ``index`` from all ranks first.

    Ownership: the module owns the bank (a buffer: it moves with ``.to(device)`` and is saved
    in ``state_dict``) and the generator of its negatives. Create one instance per candidate;
    the bank starts as random unit vectors drawn from ``seed``, identical on every rank with
    the same seed. Every rank must call :meth:`forward` with the same batch size.

    Args:
        num_items: Number of training images (bank rows); indices lie in ``[0, num_items)``.
        dim: Projection dimension.
        temperature: Similarity temperature, ``> 0``.
        num_negatives: Negatives per anchor, ``>= 1``.
        momentum: Weight of the old bank entry in the update, in ``[0, 1)``.
        image_weight: Weight of the image term in the loss, in ``[0, 1]``.
        seed: Seed of the initial bank and of the negatives.

    Raises:
        ValueError: An argument out of range.
    """

    bank: torch.Tensor

    def __init__(
        self,
        num_items: int,
        dim: int,
        temperature: float = 0.07,
        num_negatives: int = 510,
        momentum: float = 0.5,
        image_weight: float = 0.5,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {num_items}")
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if num_negatives < 1:
            raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if not 0.0 <= image_weight <= 1.0:
            raise ValueError(f"image_weight must be in [0, 1], got {image_weight}")
        self.num_items = num_items
        self.dim = dim
        self.temperature = float(temperature)
        self.num_negatives = num_negatives
        self.momentum = float(momentum)
        self.image_weight = float(image_weight)
        self.seed = seed
        # The initial bank is drawn on the CPU so it does not depend on the device.
        init = torch.Generator().manual_seed(seed)
        bank = F.normalize(torch.randn(num_items, dim, generator=init), dim=1)
        self.register_buffer("bank", bank)
        # Created lazily on the bank's device (a generator cannot follow .to(device)).
        self._negatives_gen: torch.Generator | None = None

    def extra_repr(self) -> str:
        """Shown by ``print(module)``."""
        return (
            f"num_items={self.num_items}, dim={self.dim}, temperature={self.temperature}, "
            f"num_negatives={self.num_negatives}, momentum={self.momentum}, "
            f"image_weight={self.image_weight}"
        )

    def negatives_generator(self) -> torch.Generator:
        """The generator of negative samples, on the bank's device (checkpointed by trainers)."""
        device = self.bank.device
        gen = self._negatives_gen
        if gen is None or gen.device != device:
            gen = torch.Generator(device=device)
            # Ranks draw different negatives (their losses are local), reproducibly.
            gen.manual_seed(self.seed * 1_000_003 + 7919 * (get_rank() + 1))
            self._negatives_gen = gen
        return gen

    def sample_negatives(self, batch: int) -> torch.Tensor:
        """``[batch, num_negatives]`` int64 bank rows drawn uniformly with replacement."""
        return torch.randint(
            self.num_items,
            (batch, self.num_negatives),
            generator=self.negatives_generator(),
            device=self.bank.device,
        )

    def _nce(
        self, query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor
    ) -> torch.Tensor:
        """InfoNCE of unit ``query`` [B, D] vs ``positive`` [B, D] and ``negatives`` [B, K, D]."""
        pos = (query * positive).sum(dim=1, keepdim=True)  # [B, 1]
        neg = torch.einsum("bd,bkd->bk", query, negatives)  # [B, K]
        logits = torch.cat([pos, neg], dim=1) / self.temperature
        target = torch.zeros(query.shape[0], dtype=torch.long, device=query.device)
        return F.cross_entropy(logits, target)

    def forward(
        self,
        z_image: torch.Tensor,
        z_view: torch.Tensor,
        index: torch.Tensor,
        *,
        check_index: bool = True,
    ) -> torch.Tensor:
        """Loss of a batch, then the (gradient-free) bank update.

        Args:
            z_image: ``[B, dim]`` projections of the images (first view), unnormalised.
            z_view: ``[B, dim]`` projections of the transformed views, unnormalised.
            index: ``[B]`` int64 bank rows of the images, on the bank's device, distinct
                within the global batch (duplicates make the update order-dependent).
            check_index: check that ``index`` lies in ``[0, num_items)``. The check reads
                the index back from the device (a host sync); a trainer whose indices are
                valid by construction turns it off.

        Returns:
            A scalar tensor; gradients flow into ``z_image`` and ``z_view`` only.

        Raises:
            ValueError: Wrong shapes or dtype, or an index outside ``[0, num_items)``.
        """
        _check_pair(z_image, z_view, "z_image", "z_view")
        if z_image.shape[1] != self.dim:
            raise ValueError(f"projections have dim {z_image.shape[1]}, the bank has {self.dim}")
        if index.dim() != 1 or index.shape[0] != z_image.shape[0]:
            raise ValueError(
                f"index must be [B] with B={z_image.shape[0]}, got shape {tuple(index.shape)}"
            )
        if index.dtype != torch.long:
            raise ValueError(f"index must be int64, got {index.dtype}")
        if check_index and index.numel() and not self._in_range(index):
            raise ValueError(f"index out of range [0, {self.num_items})")
        index = index.to(self.bank.device)
        q_image = F.normalize(z_image, dim=1)
        q_view = F.normalize(z_view, dim=1)
        bank = self.bank.to(q_image.dtype)
        positive = bank[index]
        neg_index = self.sample_negatives(index.shape[0])
        negatives = bank[neg_index]  # [B, K, D], shared by both terms
        loss = self.image_weight * self._nce(q_view, positive, negatives) + (
            1.0 - self.image_weight
        ) * self._nce(q_image, positive, negatives)
        self._update(q_image.detach(), index)
        return loss

    def _in_range(self, index: torch.Tensor) -> bool:
        return int(index.min()) >= 0 and int(index.max()) < self.num_items

    @torch.no_grad()
    def _update(self, q_image: torch.Tensor, index: torch.Tensor) -> None:
        """Move the bank rows of the GLOBAL batch towards their normalised image embeddings."""
        q_all = all_gather_nograd(q_image).to(self.bank.dtype)
        idx_all = all_gather_nograd(index)
        mixed = self.momentum * self.bank[idx_all] + (1.0 - self.momentum) * q_all
        self.bank[idx_all] = F.normalize(mixed, dim=1)
