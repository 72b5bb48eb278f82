"""Image sources: digits, npz, torchvision files (faked on disk), folders; config validation."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnas_hpc.config.data import DataConfig
from cnas_hpc.data import datasets
from cnas_hpc.data.datasets import (
    ImageArrays,
    check_available,
    digits_arrays,
    load_images,
    resize_images,
)

# The real-CIFAR-10 copy next to the checkout (see its README.md). CI always has it.
SHARED_CIFAR10 = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"


def _skip_unless_ci(reason: str) -> None:
    # CI always has the shared data: there a missing file is a failure, not a skip.
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must have it)")
    pytest.skip(reason)


# ---------------------------------------------------------------- DataConfig


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"source": "mnist"},
            "data.source must be one of digits, npz, cifar10, cifar100, stl10, folder, got 'mnist'",
        ),
        ({"fraction": 1.5}, "data.fraction must be in (0, 1], got 1.5"),
        ({"fraction": 0.0}, "data.fraction must be in (0, 1], got 0.0"),
        ({"val_fraction": 1.0}, "data.val_fraction must be in [0, 1), got 1.0"),
        ({"labeled_fraction": -0.1}, "data.labeled_fraction must be in [0, 1], got -0.1"),
        ({"image_size": 4}, "data.image_size must be an integer >= 8, got 4"),
        ({"image_size": 32.0}, "data.image_size must be an integer, got 32.0"),
        ({"image_size": True}, "data.image_size must be an integer, got True"),
        ({"max_images": 0}, "data.max_images must be an integer >= 1, got 0"),
        ({"seed": -1}, "data.seed must be an integer >= 0, got -1"),
        ({"fraction": "half"}, "data.fraction must be a number, got 'half'"),
        ({"source": "npz"}, "data.source=npz needs data.path (the .npz file)"),
        ({"source": "cifar10"}, "data.source=cifar10 needs data.root"),
        ({"source": "folder"}, "data.source=folder needs data.root (the image folder)"),
        (
            {"source": "cifar10", "root": "/x", "split": "unlabeled"},
            "data.split for cifar10 must be one of train, test, got 'unlabeled'",
        ),
        (
            {"source": "stl10", "root": "/x", "split": "unlabeled", "labeled_fraction": 0.1},
            "needs labels, but STL-10 split 'unlabeled' has unlabeled images",
        ),
    ],
)
def test_data_config_rejects_bad_values_in_one_line(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError) as info:
        DataConfig(**kwargs)  # type: ignore[arg-type]
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_data_config_accepts_every_source() -> None:
    DataConfig()
    DataConfig(source="npz", path="x.npz")
    DataConfig(source="stl10", root="r", split="train+unlabeled", fraction=1, val_fraction=0)
    DataConfig(source="folder", root="r", labeled_fraction=1.0, max_images=5)


# ---------------------------------------------------------------- digits


def test_digits_are_the_real_1797_images() -> None:
    from sklearn.datasets import load_digits

    data = load_images(DataConfig(image_size=32))
    assert len(data) == 1797
    assert data.images.shape == (1797, 3, 32, 32)
    assert data.images.dtype == torch.uint8
    assert data.images.is_contiguous()
    assert int(data.images.min()) == 0 and int(data.images.max()) == 255
    assert data.images.float().std() > 30  # real strokes, not a constant
    assert torch.equal(data.images[:, 0], data.images[:, 1])  # grey replicated
    assert torch.equal(data.images[:, 0], data.images[:, 2])
    assert data.labels is not None and data.labels.dtype == torch.int64
    assert sorted(data.labels.unique().tolist()) == list(range(10))
    # At the native 8x8 the pixels are exactly sklearn's, rescaled from 0..16 to 0..255.
    native = load_images(DataConfig(image_size=8))
    expected = np.rint(load_digits().images * 255 / 16).astype(np.uint8)
    assert torch.equal(native.images[:, 0], torch.from_numpy(expected))
    assert torch.equal(native.labels, data.labels)  # type: ignore[arg-type]
    assert torch.equal(data.labels, torch.from_numpy(load_digits().target).long())


def test_digits_are_read_without_importing_scikit_learn_and_equal_its_loader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sklearn.datasets import load_digits

    probe = "import sys; from cnas_hpc.data.datasets import digits_arrays; digits_arrays(); "
    probe += "print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # the file, not the package (~1.3 CPU-s of a start)
    images, labels = digits_arrays()
    reference = load_digits()
    assert np.array_equal(images, reference.images) and np.array_equal(labels, reference.target)
    # Where scikit-learn's file is not found, its loader gives the same arrays.
    monkeypatch.setattr(datasets.importlib.util, "find_spec", lambda name: None)
    fallback_images, fallback_labels = digits_arrays()
    assert np.array_equal(fallback_images, images) and np.array_equal(fallback_labels, labels)


# ---------------------------------------------------------------- resize


def test_resize_keeps_constants_and_shapes() -> None:
    images = torch.full((3, 3, 20, 20), 77, dtype=torch.uint8)
    for size in (8, 20, 33):
        out = resize_images(images, size)
        assert out.shape == (3, 3, size, size) and out.dtype == torch.uint8
        assert out.is_contiguous()
        assert bool((out == 77).all())


def test_resize_is_antialiased() -> None:
    # One bright column in four, shrunk 4x: antialiasing averages it to 255 / 4 everywhere,
    # while plain bilinear samples between the dark columns only and returns all zeros.
    columns = (torch.arange(64) % 4 == 0).to(torch.uint8) * 255
    images = columns.expand(2, 3, 64, 64)
    out = resize_images(images, 16).float()
    assert bool((out > 40).all()) and bool((out < 90).all())  # borders see a partial window
    assert torch.allclose(out[..., 1:-1], torch.full_like(out[..., 1:-1], 63.75), atol=1)


def test_resize_center_crops_non_square_images() -> None:
    # Three vertical bands, 10 px each: the centered 10x10 square is the green band only.
    image = torch.zeros(1, 3, 10, 30, dtype=torch.uint8)
    image[0, 0, :, :10] = 255
    image[0, 1, :, 10:20] = 255
    image[0, 2, :, 20:] = 255
    out = resize_images(image, 8)
    assert bool((out[0, 1] == 255).all())
    assert int(out[0, 0].max()) == 0 and int(out[0, 2].max()) == 0


def test_resize_rejects_float_images() -> None:
    with pytest.raises(ValueError, match="uint8"):
        resize_images(torch.zeros(1, 3, 8, 8), 8)


# ---------------------------------------------------------------- ImageArrays


def test_image_arrays_contract_and_subset() -> None:
    images = torch.arange(5, dtype=torch.uint8).view(5, 1, 1, 1).expand(5, 3, 2, 2).contiguous()
    arrays = ImageArrays(images, torch.arange(5), "toy")
    sub = arrays.subset(torch.tensor([4, 1]))
    assert len(sub) == 2 and sub.name == "toy"
    assert sub.images[:, 0, 0, 0].tolist() == [4, 1]
    assert sub.labels is not None and sub.labels.tolist() == [4, 1]
    sub.images.zero_()
    assert int(arrays.images[4, 0, 0, 0]) == 4  # a copy, not a view
    with pytest.raises(ValueError, match=r"uint8 \[N, 3, H, W\]"):
        ImageArrays(images.float(), None, "bad")
    with pytest.raises(ValueError, match=r"uint8 \[N, 3, H, W\]"):
        ImageArrays(images[:, :1], None, "bad")
    with pytest.raises(ValueError, match=r"labels must be int64 \[5\]"):
        ImageArrays(images, torch.arange(4), "bad")


# ---------------------------------------------------------------- npz


def _indexed_npz(path: Path, n: int, *, grey: bool = False) -> None:
    # Image i is filled with the value i, so any subset can be traced back to its source rows.
    images = np.repeat(np.arange(n, dtype=np.uint8), 9 * 9).reshape(n, 9, 9)
    if not grey:
        images = np.repeat(images[..., None], 3, axis=-1)
        images[:, 0, 0, 2] = 0  # one odd pixel: channel order must survive
    np.savez(path, images=images, labels=np.arange(n) % 7)


def test_npz_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "toy.npz"
    _indexed_npz(path, 20)
    data = load_images(DataConfig(source="npz", path=str(path), image_size=9))
    assert data.images.shape == (20, 3, 9, 9)
    assert data.images[:, 0, 1, 1].tolist() == list(range(20))
    assert data.images[:, 2, 0, 0].tolist() == [0] * 20
    assert data.labels is not None and data.labels.tolist() == [i % 7 for i in range(20)]
    assert data.name == "npz:toy"
    resized = load_images(DataConfig(source="npz", path=str(path), image_size=16))
    assert resized.images.shape == (20, 3, 16, 16)


def test_npz_grey_nhw_is_replicated(tmp_path: Path) -> None:
    path = tmp_path / "grey.npz"
    _indexed_npz(path, 4, grey=True)
    data = load_images(DataConfig(source="npz", path=str(path), image_size=9))
    assert data.images.shape == (4, 3, 9, 9)
    assert torch.equal(data.images[:, 0], data.images[:, 2])
    assert data.images[:, 1, 4, 4].tolist() == [0, 1, 2, 3]


def test_max_images_is_a_seeded_subset_in_source_order(tmp_path: Path) -> None:
    path = tmp_path / "toy.npz"
    _indexed_npz(path, 200)

    def ids(seed: int) -> list[int]:
        data = load_images(
            DataConfig(source="npz", path=str(path), image_size=9, max_images=30, seed=seed)
        )
        values = data.images[:, 0, 4, 4].tolist()
        assert data.labels is not None and data.labels.tolist() == [v % 7 for v in values]
        return values

    first = ids(0)
    assert len(first) == len(set(first)) == 30
    assert first == sorted(first)
    assert ids(0) == first
    assert ids(1) != first
    assert first != list(range(30))  # a shuffle, not the head of the file


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"pixels": np.zeros((2, 4, 4, 3), np.uint8)}, "has no 'images' array (keys: pixels)"),
        ({"images": np.zeros((2, 4, 4, 3), np.float32)}, "'images' must be uint8, got float32"),
        ({"images": np.zeros((2, 3, 4, 4), np.uint8)}, "got shape (2, 3, 4, 4)"),
        ({"images": np.zeros((4, 4), np.uint8)}, "got shape (4, 4)"),
        (
            {"images": np.zeros((2, 4, 4, 3), np.uint8), "labels": np.zeros(3, np.int64)},
            "'labels' must be integers of shape (2,)",
        ),
        (
            {"images": np.zeros((2, 4, 4, 3), np.uint8), "labels": np.zeros(2, np.float64)},
            "'labels' must be integers",
        ),
    ],
)
def test_npz_rejects_bad_content(
    tmp_path: Path, arrays: dict[str, np.ndarray], message: str
) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    with pytest.raises(ValueError) as info:
        load_images(DataConfig(source="npz", path=str(path)))
    assert message in str(info.value)


def test_npz_missing_file(tmp_path: Path) -> None:
    cfg = DataConfig(source="npz", path=str(tmp_path / "nope.npz"))
    with pytest.raises(FileNotFoundError, match=r"npz file .*nope\.npz not found \(data\.path\)"):
        check_available(cfg)
    with pytest.raises(FileNotFoundError):
        load_images(cfg)


def test_shared_cifar10_npz() -> None:
    path = SHARED_CIFAR10 / "cifar10_train_10k.npz"
    if not path.is_file():
        _skip_unless_ci(f"real CIFAR-10 copy absent: {path}")
    data = load_images(DataConfig(source="npz", path=str(path)))
    assert data.images.shape == (10_000, 3, 32, 32)
    assert data.labels is not None and sorted(data.labels.unique().tolist()) == list(range(10))
    # README: train mean RGB 125.3 / 122.9 / 113.9 (a real photo set is bluish-dark, not grey).
    means = data.images.float().mean(dim=(0, 2, 3))
    assert torch.allclose(means, torch.tensor([125.3, 122.9, 113.9]), atol=1.5)
    small = load_images(DataConfig(source="npz", path=str(path), image_size=16, max_images=64))
    assert small.images.shape == (64, 3, 16, 16)


# ---------------------------------------------------------------- torchvision files (faked)


def _fake_cifar10(root: Path, per_batch: int = 2) -> np.ndarray:
    """torchvision's CIFAR-10 python layout with tiny batches; returns the train images NHWC."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train = []
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        images = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
        rows = images.transpose(0, 3, 1, 2).reshape(per_batch, 3072)  # CIFAR stores planes
        labels = [(k * per_batch + j) % 10 for j in range(per_batch)]
        with (folder / name).open("wb") as f:
            pickle.dump({"data": rows, "labels": labels}, f)
        if name != "test_batch":
            train.append(images)
    with (folder / "batches.meta").open("wb") as f:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, f)
    return np.concatenate(train)


def _fake_stl10(root: Path) -> dict[str, np.ndarray]:
    """torchvision's STL-10 binary layout: 3 train, 2 test, 4 unlabeled images."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    out = {}
    for split, n in (("train", 3), ("test", 2), ("unlabeled", 4)):
        images = rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
        # STL-10 stores each channel column-major: [N, C, W, H].
        (folder / f"{split}_X.bin").write_bytes(images.transpose(0, 3, 2, 1).tobytes())
        if split != "unlabeled":
            (folder / f"{split}_y.bin").write_bytes(np.arange(1, n + 1, dtype=np.uint8).tobytes())
        out[split] = images
    return out


@pytest.fixture
def no_checksums(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake files cannot match torchvision's MD5s: trust them."""
    import torchvision.datasets.cifar as cifar
    from torchvision.datasets import CIFAR10, STL10

    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(STL10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)


@pytest.mark.usefixtures("no_checksums")
def test_cifar10_files_are_read_as_nchw(tmp_path: Path) -> None:
    expected = _fake_cifar10(tmp_path)
    cfg = DataConfig(source="cifar10", root=str(tmp_path), image_size=32)
    check_available(cfg)
    data = load_images(cfg)
    assert data.name == "cifar10:train"
    assert torch.equal(data.images, torch.from_numpy(expected).permute(0, 3, 1, 2))
    assert data.labels is not None and data.labels.tolist() == [i % 10 for i in range(10)]
    test = load_images(DataConfig(source="cifar10", root=str(tmp_path), split="test"))
    assert len(test) == 2


@pytest.mark.usefixtures("no_checksums")
def test_stl10_splits_and_missing_labels(tmp_path: Path) -> None:
    expected = _fake_stl10(tmp_path)

    def load(split: str, size: int = 96) -> ImageArrays:
        return load_images(
            DataConfig(source="stl10", root=str(tmp_path), split=split, image_size=size)
        )

    train = load("train")
    assert torch.equal(train.images, torch.from_numpy(expected["train"]).permute(0, 3, 1, 2))
    assert train.labels is not None and train.labels.tolist() == [0, 1, 2]
    unlabeled = load("unlabeled", 32)
    assert unlabeled.images.shape == (4, 3, 32, 32) and unlabeled.labels is None
    both = load("train+unlabeled", 32)
    assert len(both) == 7 and both.labels is None


def test_torchvision_sources_missing_give_the_prepare_command(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for source, shown in (("cifar10", "CIFAR-10"), ("cifar100", "CIFAR-100"), ("stl10", "STL-10")):
        with pytest.raises(FileNotFoundError) as info:
            check_available(DataConfig(source=source, root=str(root)))  # type: ignore[arg-type]
        message = str(info.value)
        assert message.startswith(f"{shown} not found under {root}")
        assert f"run `python launch/prepare_data.py {source} --root {root}`" in message
        assert "\n" not in message
    # Downloading is allowed: nothing to complain about before the job runs.
    check_available(DataConfig(source="cifar10", root=str(root), download=True))


def test_torchvision_check_names_the_missing_file(tmp_path: Path) -> None:
    _fake_cifar10(tmp_path)
    cfg = DataConfig(source="cifar10", root=str(tmp_path))
    check_available(cfg)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match="missing cifar-10-batches-py/test_batch"):
        check_available(cfg)


# ---------------------------------------------------------------- folder


def _png(path: Path, color: tuple[int, int, int] | int, size: tuple[int, int] = (20, 20)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "L" if isinstance(color, int) else "RGB"
    Image.new(mode, size, color).save(path)


def test_folder_with_class_subfolders(tmp_path: Path) -> None:
    _png(tmp_path / "cat" / "a.png", (255, 0, 0))
    _png(tmp_path / "cat" / "b.png", (255, 0, 0), size=(40, 24))
    _png(tmp_path / "dog" / "c.png", 90)  # grayscale file
    _png(tmp_path / "dog" / "deeper" / "d.png", 90)
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    _png(tmp_path / ".hidden" / "x.png", (0, 0, 255))
    data = load_images(DataConfig(source="folder", root=str(tmp_path), image_size=16))
    assert data.images.shape == (4, 3, 16, 16)
    assert data.labels is not None and data.labels.tolist() == [0, 0, 1, 1]
    red = torch.tensor([255, 0, 0], dtype=torch.uint8).view(3, 1, 1)
    assert bool((data.images[:2] == red).all())
    assert bool((data.images[2:] == 90).all())


def test_folder_flat_has_no_labels(tmp_path: Path) -> None:
    for i in range(5):
        _png(tmp_path / f"{i}.png", (i * 40, 0, 0))
    data = load_images(DataConfig(source="folder", root=str(tmp_path), image_size=8))
    assert data.labels is None
    assert data.images[:, 0, 0, 0].tolist() == [0, 40, 80, 120, 160]
    capped = load_images(
        DataConfig(source="folder", root=str(tmp_path), image_size=8, max_images=2)
    )
    assert len(capped) == 2


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"image folder .* not found"):
        load_images(DataConfig(source="folder", root=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no image files"):
        load_images(DataConfig(source="folder", root=str(tmp_path / "empty")))
    mixed = tmp_path / "mixed"
    _png(mixed / "top.png", (1, 2, 3))
    _png(mixed / "cls" / "a.png", (1, 2, 3))
    with pytest.raises(ValueError, match="mixes images at the top level with class sub-folders"):
        load_images(DataConfig(source="folder", root=str(mixed)))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot read image .*a\.png"):
        load_images(DataConfig(source="folder", root=str(broken)))
