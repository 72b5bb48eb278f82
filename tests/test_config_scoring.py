"""The scoring setup: one identity of what a score means, shared by the search and fidelity."""

from __future__ import annotations

from pathlib import Path

from cnas_hpc.config.fidelity import FidelityConfig, FidelitySettings
from cnas_hpc.config.protocol import ProtocolConfig
from cnas_hpc.config.scoring import scoring_setup, setup_differences, setup_digest
from tests.helpers import tiny_settings


def test_the_setup_holds_what_changes_a_score_and_nothing_else(tmp_path: Path) -> None:
    setup = scoring_setup(tiny_settings(tmp_path, "data=npz", "data.path=/a/b/images.npz"))
    assert setup["model.cells"] == 3 and setup["train.epochs"] == 1
    assert setup["data.path"] == "images.npz"  # the file, not where it lies
    assert setup["search.objective"] == "val_contrastive_loss"
    assert setup["augment.crop_scale"] == [0.2, 1.0]  # as JSON stores it
    for ignored in ("train.num_threads", "train.perf", "train.amp", "train.log_every_steps"):
        assert ignored not in setup
    assert not any(key.startswith(("study.", "wandb.", "checkpoint.")) for key in setup)
    assert "search.n_trials" not in setup and "search.pruner" not in setup
    moved = tiny_settings(tmp_path / "x", "data=npz", "data.path=/c/images.npz", "worker=3")
    assert scoring_setup(moved) == setup


def test_differences_name_each_key_with_old_and_new(tmp_path: Path) -> None:
    recorded = scoring_setup(tiny_settings(tmp_path))
    other = tiny_settings(tmp_path, "model.channels=6", "data=npz", "data.path=x.npz")
    assert setup_differences(recorded, other) == [
        "model.channels 4 -> 6",
        "data.source digits -> npz",
        "data.path null -> x.npz",
        "data.val_fraction 0.2 -> 0.1",  # data=npz's own value
    ]
    assert setup_differences(recorded, tiny_settings(tmp_path, "train.num_threads=1")) == []


def test_a_key_the_record_lacks_is_compared_with_its_default(tmp_path: Path) -> None:
    # A study recorded before `train.temperature` joined the setup used the default then.
    recorded = scoring_setup(tiny_settings(tmp_path))
    del recorded["train.temperature"]
    assert setup_differences(recorded, tiny_settings(tmp_path)) == []
    assert setup_differences(recorded, tiny_settings(tmp_path, "train.temperature=0.1")) == [
        "train.temperature 0.5 -> 0.1"
    ]


def test_fidelity_keys_its_scores_by_the_same_setup(tmp_path: Path) -> None:
    search = tiny_settings(tmp_path)
    fidelity = FidelitySettings(search, ProtocolConfig(), FidelityConfig())
    setup, digest = fidelity.score_fingerprint()
    # The search's setup less what does not decide the contrastive run: the objective (one run
    # records them all) and the zero-cost proxies (measurements of their own).
    expected = {
        k: v
        for k, v in scoring_setup(search).items()
        if k.split(".")[0] not in ("search", "zero_cost")
    }
    assert setup == expected and digest == setup_digest(setup)
    objective = tiny_settings(tmp_path, "search.objective=train_contrastive_loss")
    assert (
        FidelitySettings(objective, ProtocolConfig(), FidelityConfig()).score_fingerprint()[1]
        == digest
    )  # another contrastive objective reuses the same runs
    cells = tiny_settings(tmp_path, "model.cells=2")
    assert (
        FidelitySettings(cells, ProtocolConfig(), FidelityConfig()).score_fingerprint()[1] != digest
    )  # another proxy is another score
