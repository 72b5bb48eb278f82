"""launch/prepare_data.py: check-only runs and one-line errors (no real download here)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "launch" / "prepare_data.py"


def _script() -> ModuleType:
    # launch/ is not a package: load the script as the CLI would run it.
    spec = importlib.util.spec_from_file_location("prepare_data", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_cifar10_files(root: Path) -> None:
    # --check only looks for the files torchvision needs; their content is never read.
    from torchvision.datasets import CIFAR10

    folder = root / CIFAR10.base_folder
    folder.mkdir(parents=True)
    for name, _ in CIFAR10.train_list + CIFAR10.test_list:
        (folder / name).write_bytes(b"")
    (folder / CIFAR10.meta["filename"]).write_bytes(b"")


def test_check_on_missing_root_fails_with_one_clear_line(tmp_path: Path) -> None:
    root = tmp_path / "nowhere"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "cifar10", "--root", str(root), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"CIFAR-10 not found under {root}" in lines[0]
    assert f"run `python launch/prepare_data.py cifar10 --root {root}`" in lines[0]
    assert not root.exists()  # --check never creates or downloads anything


def test_check_on_prepared_root_succeeds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake_cifar10_files(tmp_path)
    assert _script().main(["cifar10", "--root", str(tmp_path), "--check"]) == 0
    assert "cifar10 is ready under" in capsys.readouterr().out


def test_download_failure_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    script = _script()

    def offline(name: str, root: str) -> Path:
        raise OSError("<urlopen error [Errno -3]\nTemporary failure in name resolution>")

    monkeypatch.setattr(script, "download_dataset", offline)
    assert script.main(["stl10", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [
        "prepare_data: error: <urlopen error [Errno -3] Temporary failure in name resolution>"
    ]


def test_unknown_dataset_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        _script().main(["imagenet", "--root", str(tmp_path)])
    assert info.value.code == 2


def test_download_dataset_rejects_unknown_names(tmp_path: Path) -> None:
    from cnas_hpc.data.datasets import download_dataset

    with pytest.raises(ValueError, match="can only download cifar10, cifar100, stl10, got 'mnist'"):
        download_dataset("mnist", tmp_path)
