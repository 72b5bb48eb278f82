"""The ``zero_cost`` section: the zero-cost proxies (NASWOT, synflow) of a cell.

They score a cell's UNTRAINED network, built at ``cells`` x ``channels`` (the DARTS CIFAR body
with a linear classifier, no auxiliary head), on one batch of ``batch_size`` unlabeled training
images (NASWOT; synflow is data-free). Seconds per cell on a CPU: every trial records them, and
``search.objective=naswot|synflow`` searches on them alone (no contrastive training at all).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from cnas_hpc.config.build import Count, section


@section("zero_cost")
class ZeroCostConfig:
    """Shape of the network the zero-cost proxies score, and NASWOT's batch.

    Attributes:
        cells: Cells of the scored network.
        channels: Channels of its first cells.
        batch_size: Unlabeled images of NASWOT's batch (its kernel is ``batch x batch``).
        record: Compute both scores for every trial of a contrastive search too (about two
            CPU-seconds per trial) and record them on the trial (``cnas:naswot``,
            ``cnas:synflow``), so a study can be re-ranked by them afterwards.
    """

    cells: Count = 8
    channels: Count = 16
    batch_size: Annotated[int, Field(ge=2)] = 64
    record: bool = True
