"""Image sources for the search: a whole (small) data set as one uint8 tensor in memory.

The search trains each candidate on a few thousand unlabeled images for a few epochs. A
per-sample ``Dataset``/``DataLoader`` pipeline would dominate that cost, so every source is read
once into an :class:`ImageArrays` (uint8, ``[N, 3, H, W]``, CPU); the training loop moves it to
the device once and augments whole batches there.

Sources (``DataConfig.source``):

* ``digits``: scikit-learn's bundled 1,797 real 8x8 digits. The embedded default: no download,
  no files, so tests and smoke runs work anywhere.
* ``npz``: an ``.npz`` file with ``images`` (uint8, NHWC or NHW) and optional ``labels``.
* ``cifar10``, ``cifar100``, ``stl10``: torchvision's files under an explicit root. Compute nodes
  have no internet: download on the login node with ``launch/prepare_data.py`` first.
* ``folder``: image files, either ``root/<class>/**/*.png`` (labels from the sub-folders, in
  sorted order, as torchvision's ``ImageFolder``) or a flat folder (no labels).

Every image is center-cropped to a square and resized to ``image_size`` with antialiased bilinear
interpolation, batched in torch; grayscale is replicated to three channels.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import torch
import torch.nn.functional as F

from cnas_hpc.config.data import TORCHVISION_SOURCES, DataConfig

logger = logging.getLogger(__name__)

#: File extensions the ``folder`` source reads (torchvision's ``IMG_EXTENSIONS``).
IMAGE_EXTENSIONS: Final[tuple[str, ...]] = (
    ".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp",
)  # fmt: skip

_DISPLAY_NAMES: Final[dict[str, str]] = {
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "stl10": "STL-10",
}
# Independent random streams derived from the one ``seed`` (see ``seeded_permutation``), so that
# e.g. the ``max_images`` cap and the search/validation split never reuse the same permutation.
STREAM_CAP: Final[int] = 1
STREAM_SPLIT: Final[int] = 2
STREAM_EPOCH: Final[int] = 3
STREAM_ZERO_COST: Final[int] = 4
# Images resized per chunk: bounds the float32 working memory (STL-10 unlabeled is 100k images).
_RESIZE_CHUNK: Final[int] = 1024
# Image files decoded per chunk by the folder source, for the same reason.
_DECODE_CHUNK: Final[int] = 256


@dataclass(frozen=True)
class ImageArrays:
    """A set of images held in memory, optionally with labels.

    Owns nothing beyond its tensors; :meth:`subset` returns copies, so subsets never alias.

    Attributes:
        images: uint8, ``[N, 3, H, W]``, contiguous, on the CPU.
        labels: int64 ``[N]`` (class indices ``>= 0``) or ``None`` (unlabeled).
        name: Human-readable provenance, e.g. ``"cifar10:train"``.

    Raises:
        ValueError: on construction, if a tensor breaks the contract above.
    """

    images: torch.Tensor
    labels: torch.Tensor | None
    name: str

    def __post_init__(self) -> None:
        images = self.images
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(
                f"ImageArrays.images must be uint8 [N, 3, H, W], "
                f"got {images.dtype} {tuple(images.shape)}"
            )
        if images.device.type != "cpu" or not images.is_contiguous():
            raise ValueError("ImageArrays.images must be a contiguous CPU tensor")
        labels = self.labels
        if labels is not None and (
            labels.dtype != torch.int64 or labels.shape != (images.shape[0],)
        ):
            raise ValueError(
                f"ImageArrays.labels must be int64 [{images.shape[0]}], "
                f"got {labels.dtype} {tuple(labels.shape)}"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index: torch.Tensor) -> ImageArrays:
        """The images at ``index`` (and their labels), as a new, contiguous copy.

        Args:
            index: 1-D int64 CPU tensor of positions (repeats allowed) or a bool mask ``[N]``.

        Raises:
            IndexError: a position is out of range.
        """
        labels = None if self.labels is None else self.labels[index]
        return ImageArrays(self.images[index].contiguous(), labels, self.name)


def seeded_permutation(n: int, *key: int) -> torch.Tensor:
    """A permutation of ``range(n)`` fixed by ``key`` alone (int64, CPU).

    ``key`` (non-negative ints, e.g. ``(seed, STREAM_EPOCH, epoch)``) goes through NumPy's
    ``SeedSequence``, so distinct keys give independent streams and the result is identical in
    every process (no dependence on global RNG state or Python's hash randomization).

    Raises:
        ValueError: a key is negative.
    """
    if any(k < 0 for k in key):
        raise ValueError(f"permutation keys must be >= 0, got {key}")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(list(key))))
    return torch.from_numpy(rng.permutation(n).astype(np.int64))


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Center-crop to a square and resize with antialiased bilinear interpolation.

    Works in chunks, so the float working memory stays bounded for any ``N``.

    Args:
        images: uint8 ``[N, C, H, W]`` on any device.
        size: Output side.

    Returns:
        uint8 ``[N, C, size, size]``, contiguous, on the input's device (the input itself,
        made contiguous, when it already has that shape).

    Raises:
        ValueError: ``images`` is not uint8 ``[N, C, H, W]`` or ``size < 1``.
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(
            f"resize_images needs uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}"
        )
    if size < 1:
        raise ValueError(f"resize_images needs size >= 1, got {size}")
    n, c, h, w = images.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    images = images[:, :, top : top + side, left : left + side]
    if side == size:
        return images.contiguous()
    out = torch.empty((n, c, size, size), dtype=torch.uint8, device=images.device)
    for start in range(0, n, _RESIZE_CHUNK):
        chunk = images[start : start + _RESIZE_CHUNK].float()
        resized = F.interpolate(
            chunk, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
        out[start : start + _RESIZE_CHUNK] = resized.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _display_name(source: str) -> str:
    return _DISPLAY_NAMES.get(source, source)


def _absolute(path: str) -> Path:
    return Path(path).expanduser().absolute()


def _torchvision_files(source: str) -> tuple[str, list[str]]:
    """The folder under ``root`` and the files torchvision insists on, for ``source``."""
    from torchvision.datasets import CIFAR10, CIFAR100, STL10

    if source == "stl10":
        return STL10.base_folder, [name for name, _ in STL10.train_list + STL10.test_list]
    cls = CIFAR10 if source == "cifar10" else CIFAR100
    names = [name for name, _ in cls.train_list + cls.test_list]
    return cls.base_folder, [*names, str(cls.meta["filename"])]


def _iter_image_files(folder: Path) -> Iterator[Path]:
    """Image files below ``folder`` (recursively, sorted, hidden entries skipped)."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                yield Path(dirpath) / name


def check_available(cfg: DataConfig) -> None:
    """Check that ``cfg``'s data is on disk, without reading it.

    Meant for the submitting side: a missing data set fails there, in one line, before any job
    is queued. Only existence is checked (no checksums): cheap even for STL-10's 2.6 GB.
    ``digits`` is bundled with scikit-learn and always available. With ``cfg.download`` a
    missing torchvision data set is not an error (it will be downloaded when loaded).

    Raises:
        FileNotFoundError: one line saying what is missing and how to get it.
    """
    if cfg.source == "npz":
        assert cfg.path is not None  # DataConfig guarantees it
        path = _absolute(cfg.path)
        if not path.is_file():
            raise FileNotFoundError(f"npz file {path} not found (data.path)")
    elif cfg.source in TORCHVISION_SOURCES:
        assert cfg.root is not None
        if cfg.download:
            return
        root = _absolute(cfg.root)
        folder, names = _torchvision_files(cfg.source)
        missing = [name for name in names if not (root / folder / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{_display_name(cfg.source)} not found under {root} "
                f"(missing {folder}/{missing[0]}): run `python launch/prepare_data.py "
                f"{cfg.source} --root {root}` on a node with internet"
            )
    elif cfg.source == "folder":
        assert cfg.root is not None
        root = _absolute(cfg.root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {root} not found (data.root)")
        if next(_iter_image_files(root), None) is None:
            raise FileNotFoundError(
                f"image folder {root} has no image files ({', '.join(IMAGE_EXTENSIONS)})"
            )


def download_dataset(name: str, root: str | Path) -> Path:
    """Download a torchvision data set (train and test files) into ``root``; needs internet.

    Files already present and intact are not downloaded again.

    Args:
        name: ``cifar10``, ``cifar100`` or ``stl10``.
        root: Destination folder (created if missing).

    Returns:
        The absolute root, to pass as ``data.root``.

    Raises:
        ValueError: unknown ``name``.
        OSError: the download failed (no network, disk full, ...).
        RuntimeError: the downloaded archive is corrupted.
    """
    if name not in TORCHVISION_SOURCES:
        raise ValueError(f"can only download {', '.join(TORCHVISION_SOURCES)}, got {name!r}")
    from torchvision.datasets import CIFAR10, CIFAR100, STL10

    path = _absolute(str(root))
    path.mkdir(parents=True, exist_ok=True)
    # Each constructor downloads and extracts the whole archive (every split) before loading.
    if name == "cifar10":
        CIFAR10(str(path), train=True, download=True)
    elif name == "cifar100":
        CIFAR100(str(path), train=True, download=True)
    else:
        STL10(str(path), split="train", download=True)
    return path


def load_images(cfg: DataConfig) -> ImageArrays:
    """Read the source of ``cfg`` into memory, capped, center-cropped and resized.

    Args:
        cfg: A validated :class:`DataConfig`.

    Returns:
        Images uint8 ``[N, 3, image_size, image_size]`` (CPU), with labels where the source
        has them (an STL-10 split containing unlabeled images has none). With ``max_images``,
        ``N = min(max_images, size of the source)`` images chosen by a seeded shuffle, kept in
        source order.

    Raises:
        FileNotFoundError: the data is not on disk (see :func:`check_available`).
        ValueError: the file's content is not images (wrong dtype, shape, missing key).
    """
    check_available(cfg)
    started = time.perf_counter()
    if cfg.source == "digits":
        arrays = _load_digits(cfg)
    elif cfg.source == "npz":
        arrays = _load_npz(cfg)
    elif cfg.source in TORCHVISION_SOURCES:
        arrays = _load_torchvision(cfg)
    else:
        arrays = _load_folder(cfg)
    logger.info(
        "loaded %d images %s from %s in %.1f s",
        len(arrays),
        tuple(arrays.images.shape[1:]),
        arrays.name,
        time.perf_counter() - started,
    )
    return arrays


def _cap_index(n: int, cfg: DataConfig) -> np.ndarray | None:
    """Sorted positions of the images to keep under ``max_images``; ``None`` keeps all."""
    if cfg.max_images is None or cfg.max_images >= n:
        return None
    chosen = seeded_permutation(n, cfg.seed, STREAM_CAP)[: cfg.max_images].numpy()
    # Source order: sequential reads, and the set depends only on the seed.
    return np.sort(chosen)


def _from_nhwc(
    array: np.ndarray, labels: np.ndarray | None, name: str, cfg: DataConfig
) -> ImageArrays:
    """Cap, resize and pack a uint8 ``[N, H, W, C]`` array (C = 1 or 3)."""
    index = _cap_index(array.shape[0], cfg)
    if index is not None:
        array = array[index]
        labels = None if labels is None else labels[index]
    # Resize before replicating grey to RGB: a third of the work.
    nchw = torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2)
    images = resize_images(nchw, cfg.image_size)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    label_tensor = None
    if labels is not None:
        label_tensor = torch.from_numpy(np.asarray(labels).astype(np.int64))
    return ImageArrays(images.contiguous(), label_tensor, name)


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: ``(images [1797, 8, 8] float64 in 0..16, labels [1797] int)``.

    The same arrays as ``sklearn.datasets.load_digits()`` (a test holds them equal), read from
    the CSV file scikit-learn ships, without importing scikit-learn: the import (with SciPy)
    cost ~1.3 CPU-s of each worker's start on the CI machine, where loading the file costs
    ~0.03 s. Where the file is not found (a scikit-learn that moved it), ``load_digits`` is used.
    """
    spec = importlib.util.find_spec("sklearn")  # finds the package without running it
    if spec is not None and spec.origin is not None:
        csv = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
        if csv.is_file():
            table = np.loadtxt(csv, delimiter=",")
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(int)
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target


def _load_digits(cfg: DataConfig) -> ImageArrays:
    images, labels = digits_arrays()
    # 17 grey levels 0..16 -> 0..255.
    grey = np.rint(images * (255.0 / 16.0)).astype(np.uint8)
    return _from_nhwc(grey[..., None], labels, "digits", cfg)


@dataclass(frozen=True)
class NpzContents:
    """What an ``.npz`` source holds, read from its array headers (no image is decompressed)."""

    n_images: int
    labeled: bool


def _check_npz_arrays(
    path: Path,
    images: tuple[np.dtype, tuple[int, ...]],
    labels: tuple[np.dtype, tuple[int, ...]] | None,
) -> None:
    """The layout rules of an npz source, from ``(dtype, shape)`` of its arrays.

    Raises:
        ValueError: one line naming the file (``data.path``) and what is wrong.
    """
    dtype, shape = images
    if dtype != np.uint8:
        raise ValueError(f"npz file {path} (data.path): 'images' must be uint8, got {dtype}")
    nhwc = (*shape, 1) if len(shape) == 3 else shape
    if len(shape) in (3, 4) and shape[0] == 0:
        raise ValueError(f"npz file {path} (data.path) holds 0 images: nothing to search on")
    if len(nhwc) != 4 or nhwc[-1] not in (1, 3) or 0 in nhwc:
        raise ValueError(
            f"npz file {path} (data.path): 'images' must be NHWC with 1 or 3 channels "
            f"(or NHW, grey), got shape {shape}"
        )
    if labels is not None:
        label_dtype, label_shape = labels
        if not np.issubdtype(label_dtype, np.integer) or label_shape != (shape[0],):
            raise ValueError(
                f"npz file {path} (data.path): 'labels' must be integers of shape "
                f"({shape[0]},), got {label_dtype} {label_shape}"
            )


def _npy_header(archive: zipfile.ZipFile, name: str) -> tuple[np.dtype, tuple[int, ...]]:
    """``(dtype, shape)`` of member ``name`` of an npz archive, from its header alone."""
    with archive.open(name) as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(member)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(member)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    return np.dtype(dtype), tuple(int(n) for n in shape)


def inspect_npz(path: Path) -> NpzContents:
    """Check an npz source's arrays from their headers, cheaply (the submitting side).

    Applies the loader's rules (uint8 images, NHWC with 1 or 3 channels or NHW, integer labels
    of matching length) without decompressing the images.

    Raises:
        ValueError: not an npz archive, no ``images`` array, or a wrong dtype, layout or channel
            count (one line naming the file).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if "images.npy" not in names:
                keys = ", ".join(sorted(n.removesuffix(".npy") for n in names)) or "none"
                raise ValueError(f"npz file {path} has no 'images' array (keys: {keys})")
            images = _npy_header(archive, "images.npy")
            labels = _npy_header(archive, "labels.npy") if "labels.npy" in names else None
    except zipfile.BadZipFile:
        raise ValueError(f"npz file {path} is not an .npz archive (data.path)") from None
    _check_npz_arrays(path, images, labels)
    return NpzContents(n_images=images[1][0], labeled=labels is not None)


def check_folder_images(root: Path) -> None:
    """Check that every image file under ``root`` opens as an image (its header; cheap).

    Files without an image extension are ignored, as the loader ignores them; a file WITH one
    that is not an image (a truncated download, a text file named ``x.png``) would stop every
    worker at load time.

    Raises:
        ValueError: one line naming the first unreadable file.
    """
    from PIL import Image, UnidentifiedImageError

    for path in _iter_image_files(root):
        try:
            with Image.open(path) as image:
                image.size  # noqa: B018 - the header is read lazily by open()
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(
                f"image folder {root} (data.root): {path} is not an image ({exc})"
            ) from None


def _load_npz(cfg: DataConfig) -> ImageArrays:
    assert cfg.path is not None
    path = _absolute(cfg.path)
    with np.load(path, allow_pickle=False) as archive:
        if "images" not in archive.files:
            raise ValueError(
                f"npz file {path} has no 'images' array (keys: {', '.join(archive.files)})"
            )
        images = archive["images"]
        labels = archive["labels"] if "labels" in archive.files else None
    _check_npz_arrays(
        path,
        (images.dtype, images.shape),
        None if labels is None else (labels.dtype, labels.shape),
    )
    if images.ndim == 3:
        images = images[..., None]
    if labels is not None and labels.min() < 0:
        raise ValueError(f"npz file {path}: 'labels' must be >= 0, got {labels.min()}")
    return _from_nhwc(images, labels, f"npz:{path.stem}", cfg)


def _load_torchvision(cfg: DataConfig) -> ImageArrays:
    from torchvision.datasets import CIFAR10, CIFAR100, STL10

    assert cfg.root is not None
    root = str(_absolute(cfg.root))
    labels: np.ndarray | None
    if cfg.source == "stl10":
        stl = STL10(root, split=cfg.split, download=cfg.download)
        # Stored [N, 3, 96, 96]; a transposed view, copied once when capped/packed.
        images = np.transpose(stl.data, (0, 2, 3, 1))
        labels = None if stl.labels is None else np.asarray(stl.labels)
        if labels is not None and labels.min() < 0:
            # Unlabeled images are -1: a partly labeled set is treated as unlabeled.
            labels = None
    else:
        cls = CIFAR10 if cfg.source == "cifar10" else CIFAR100
        cifar = cls(root, train=cfg.split == "train", download=cfg.download)
        images = cifar.data  # [N, 32, 32, 3]
        labels = np.asarray(cifar.targets)
    return _from_nhwc(images, labels, f"{cfg.source}:{cfg.split}", cfg)


def _load_folder(cfg: DataConfig) -> ImageArrays:
    assert cfg.root is not None
    root = _absolute(cfg.root)
    files, labels = _list_folder(root)
    index = _cap_index(len(files), cfg)
    if index is not None:
        files = [files[i] for i in index]
        labels = None if labels is None else labels[index]
    images = torch.empty((len(files), 3, cfg.image_size, cfg.image_size), dtype=torch.uint8)
    for start in range(0, len(files), _DECODE_CHUNK):
        chunk = files[start : start + _DECODE_CHUNK]
        decoded = [_decode(path, cfg.image_size) for path in chunk]
        # Group by size so each group resizes as one batch.
        by_side: dict[int, list[int]] = {}
        for i, array in enumerate(decoded):
            by_side.setdefault(array.shape[0], []).append(i)
        for group in by_side.values():
            batch = torch.from_numpy(np.stack([decoded[i] for i in group])).permute(0, 3, 1, 2)
            images[[start + i for i in group]] = resize_images(batch, cfg.image_size)
    label_tensor = None if labels is None else torch.from_numpy(labels)
    return ImageArrays(images, label_tensor, f"folder:{root.name}")


def _list_folder(root: Path) -> tuple[list[Path], np.ndarray | None]:
    """Image files of ``root`` and their labels (``None`` for a flat folder).

    Raises:
        ValueError: the folder mixes top-level images with class sub-folders.
    """
    top = sorted(
        p
        for p in root.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    classes = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    per_class = [(d, list(_iter_image_files(d))) for d in classes]
    per_class = [(d, files) for d, files in per_class if files]
    if top and per_class:
        raise ValueError(
            f"image folder {root} mixes images at the top level with class sub-folders "
            f"({per_class[0][0].name}/...): use one layout"
        )
    if top:
        return top, None
    files = [f for _, class_files in per_class for f in class_files]
    labels = np.concatenate(
        [
            np.full(len(class_files), k, dtype=np.int64)
            for k, (_, class_files) in enumerate(per_class)
        ]
    )
    return files, labels


def _decode(path: Path, size: int) -> np.ndarray:
    """One image file as uint8 RGB ``[S, S, 3]``, center-cropped to a square.

    Raises:
        ValueError: the file cannot be decoded as an image.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            # JPEG can decode directly at 1/2..1/8 scale, never below the requested size.
            image.draft("RGB", (size, size))
            array = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from None
    h, w = array.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return array[top : top + side, left : left + side]
