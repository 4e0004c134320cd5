"""Image-classification tasks for the edge stages: sklearn digits, IDX files (MNIST, Fashion-MNIST) or
folders of images, reduced to a class subset, resized and split reproducibly for a seed."""

from __future__ import annotations

import gzip
import importlib.util
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from analysis.errors import PipelineError

# Pillow (image folders) is imported by the loader that uses it. The digits are read from the file
# scikit-learn ships, without importing scikit-learn: its import took 1.3 s of every edge job
# (benchmarks/demo_profile.py), 19 jobs of the demo.


class DatasetError(PipelineError):
    """A dataset spec is invalid, or the data on disk cannot be read as configured."""


@dataclass
class ImageSet:
    """``images``: (N, C, H, W) float32 in [0, 1]; ``labels``: (N,) int64 indices into ``classes``."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Task:
    """A named classification task: a train and a test split over the same classes."""

    name: str
    train: ImageSet
    test: ImageSet


DATASETS = ("digits", "idx", "folder")
_SPEC_KEYS = ("dataset", "path", "classes", "test_fraction", "max_per_class")
_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: "i2", 0x0C: "i4", 0x0D: "f4", 0x0E: "f8"}
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as PIL's "L" mode uses

# A split before selection: items (an array of images or of file names) and their original labels.
Split = tuple[np.ndarray, np.ndarray]


def read_idx(path) -> np.ndarray:
    """Read an IDX file (the MNIST format), plain or gzipped (name ending in .gz), as a native-endian array.

    The header is checked against the payload: a wrong magic number or a size that does not match the
    dimensions raises :class:`DatasetError` naming the file.
    """
    path = Path(path)
    try:
        with gzip.open(path) if path.name.endswith(".gz") else open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"{path}: cannot read ({e})") from None
    magic = int.from_bytes(data[:4], "big")
    if len(data) < 4 or data[0] or data[1] or data[2] not in _IDX_DTYPES:
        raise DatasetError(
            f"{path}: not an IDX file (magic number 0x{magic:08X}; expected 0x0000080N with N dimensions,"
            " or 0x09/0x0B/0x0C/0x0D/0x0E in place of 08 for other types)"
        )
    dtype, ndim = np.dtype(">" + _IDX_DTYPES[data[2]]), data[3]
    if len(data) < 4 + 4 * ndim:
        raise DatasetError(f"{path}: truncated IDX header ({len(data)} bytes for {ndim} dimensions)")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
    need, have = int(np.prod(dims)) * dtype.itemsize, len(data) - 4 - 4 * ndim
    if have != need:
        raise DatasetError(f"{path}: IDX payload is {have} bytes, but shape {dims} of {dtype.name} needs {need}")
    return np.frombuffer(data, dtype, offset=4 + 4 * ndim).reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file, gzipped if the name ends in .gz (the inverse of :func:`read_idx`)."""
    path, array = Path(path), np.asarray(array)
    codes = {np.dtype(t): code for code, t in _IDX_DTYPES.items()}
    if array.dtype not in codes:
        raise DatasetError(f"{path}: IDX cannot hold dtype {array.dtype} (only {sorted(map(str, codes))})")
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    # mtime=0: the same array gives the same bytes, so checksums of generated data are stable.
    path.write_bytes(gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)


def _check_idx_images(images: np.ndarray, path: Path) -> np.ndarray:
    """Images as (N, H, W, C) with C 1 or 3, uint8 (0..255) or float (0..1); converted only once chosen."""
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DatasetError(f"{path}: images must have shape (N, H, W) or (N, H, W, 1 or 3), not {images.shape}")
    out_of_range = images.size and (images.min() < 0 or images.max() > 1)
    if images.dtype != np.uint8 and (images.dtype.kind != "f" or out_of_range):
        raise DatasetError(f"{path}: images must be uint8, or float in [0, 1] (dtype {images.dtype})")
    return images


def _idx_tensors(images: np.ndarray) -> list[torch.Tensor]:
    scaled = images / np.float32(255) if images.dtype == np.uint8 else images
    return [torch.from_numpy(np.ascontiguousarray(scaled.transpose(0, 3, 1, 2), dtype=np.float32))]


def digits_file() -> Path:
    """scikit-learn's copy of the UCI 8x8 digits (``sklearn/datasets/data/digits.csv.gz``), found
    without importing scikit-learn."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError("the digits dataset needs scikit-learn installed (it ships the data file)")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        raise DatasetError(f"{path}: scikit-learn's digits file is missing (reinstall scikit-learn)")
    return path


def _load_digits() -> tuple[list[str], dict[str, Split], Callable]:
    # What sklearn.datasets.load_digits reads: 1797 rows of 64 pixel values (0..16) and the label.
    data = np.loadtxt(digits_file(), delimiter=",")
    images = (data[:, :-1].reshape(-1, 8, 8) / 16.0).astype(np.float32)[:, None]
    return [str(c) for c in range(10)], {"all": (images, data[:, -1].astype(int))}, lambda x: [torch.from_numpy(x)]


def _idx_file(root: Path, split: str, kind: str, ndim: int) -> Path:
    # MNIST mirrors differ: "train-images-idx3-ubyte" (Debian, LeCun) vs "train-images.idx3-ubyte" (Kaggle).
    pattern = f"{split}-{kind}[-.]idx{ndim}-ubyte*"
    found = sorted(p for p in root.glob(pattern) if p.name.endswith(("ubyte", "ubyte.gz")))
    if not found:
        raise DatasetError(f"{root}: missing {split}-{kind}-idx{ndim}-ubyte (plain or .gz)")
    return found[0]  # the plain file sorts before its .gz


def _load_idx(root: Path) -> tuple[list[str], dict[str, Split], Callable]:
    splits = {}
    for split, idx_name in (("train", "train"), ("test", "t10k")):
        image_file = _idx_file(root, idx_name, "images", 3)
        label_file = _idx_file(root, idx_name, "labels", 1)
        images, labels = _check_idx_images(read_idx(image_file), image_file), read_idx(label_file)
        if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(images):
            raise DatasetError(
                f"{label_file}: labels must be {len(images)} integers (one per image in {image_file.name}),"
                f" not shape {labels.shape} of {labels.dtype}"
            )
        splits[split] = (images, labels.astype(np.int64))
    values = np.union1d(splits["train"][1], splits["test"][1])
    # Labels become indices into the sorted label values, named by the values ("0".."9" for MNIST).
    splits = {s: (x, np.searchsorted(values, y)) for s, (x, y) in splits.items()}
    return [str(v) for v in values], splits, _idx_tensors


def _class_dirs(root: Path) -> dict[str, list[Path]]:
    classes = {}
    for directory in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in directory.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())
        if not files:
            suffixes = ", ".join(sorted(_IMAGE_SUFFIXES))
            raise DatasetError(f"{directory}: class folder holds no images (looked for {suffixes})")
        classes[directory.name] = files
    if not classes:
        raise DatasetError(f"{root}: no class subfolders (expected one folder of images per class)")
    return classes


def _read_image(path: str) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    except OSError as e:  # PIL's UnidentifiedImageError and truncated files are OSErrors
        raise DatasetError(f"{path}: unreadable image ({e})") from None
    return torch.from_numpy(rgb).permute(2, 0, 1)[None]


def _load_folder(root: Path) -> tuple[list[str], dict[str, Split], Callable]:
    if (root / "train").is_dir() and (root / "test").is_dir():
        layout = {"train": _class_dirs(root / "train"), "test": _class_dirs(root / "test")}
        train, test = list(layout["train"]), list(layout["test"])
        if train != test:
            raise DatasetError(f"{root}: train/ has classes {train} but test/ has {test}")
    else:
        layout = {"all": _class_dirs(root)}
    names = list(next(iter(layout.values())))
    splits = {}
    for split, dirs in layout.items():
        files = [str(f) for c in names for f in dirs[c]]
        splits[split] = (np.array(files), np.repeat(np.arange(len(names)), [len(dirs[c]) for c in names]))
    # Images may differ in size, so each is read and resized on its own.
    return names, splits, lambda files: [_read_image(f) for f in files]


def _fit(images: torch.Tensor, size: int, channels: int) -> torch.Tensor:
    """(n, 1 or 3, H, W) -> (n, channels, size, size), bilinear; antialiased where it shrinks."""
    if images.shape[-2:] != (size, size):
        shrink = size < max(images.shape[-2:])
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
    if images.shape[1] != channels:
        luma = torch.tensor(_LUMA).view(1, 3, 1, 1)
        images = images.repeat(1, 3, 1, 1) if channels == 3 else (images * luma).sum(1, keepdim=True)
    return images.clamp(0, 1)  # float rounding in the filters can step a hair outside [0, 1]


def _stratified_split(labels, keep: list[int], names, fraction: float, rng, where) -> tuple[np.ndarray, ...]:
    """Train and test indices: per kept class, a seeded ``fraction`` (at least one image) goes to test."""
    train, test = [], []
    for c in keep:
        members = rng.permutation(np.flatnonzero(labels == c))
        if len(members) < 2:
            raise DatasetError(f"{where}: class {names[c]!r} has {len(members)} image; a train/test split needs 2")
        n_test = min(max(round(fraction * len(members)), 1), len(members) - 1)
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.concatenate(train), np.concatenate(test)


def load_task(spec: dict, *, image_size: int, channels: int, seed: int, name: str = "task") -> Task:
    """Load the task ``spec`` describes (keys: dataset, path, classes, test_fraction, max_per_class).

    Images come out as ``image_size`` x ``image_size`` pixels with ``channels`` (1 or 3) channels;
    the same spec and seed give identical tensors.
    """
    where = f"dataset spec of {name!r}"
    if not isinstance(spec, dict):
        raise DatasetError(f"{where}: expected a mapping, got {type(spec).__name__}")
    for key in spec:
        if key not in _SPEC_KEYS:
            raise DatasetError(f"{where}: unknown key {key!r} (known: {', '.join(_SPEC_KEYS)})")
    dataset = spec.get("dataset")
    if dataset not in DATASETS:
        raise DatasetError(f"{where}: unknown dataset {dataset!r} (choices: {', '.join(DATASETS)})")
    if channels not in (1, 3):
        raise DatasetError(f"{where}: channels must be 1 or 3, got {channels!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise DatasetError(f"{where}: image_size must be a positive integer, got {image_size!r}")
    fraction = spec.get("test_fraction", 0.25)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise DatasetError(f"{where}: test_fraction must be a number in (0, 1), got {fraction!r}")
    cap = spec.get("max_per_class")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise DatasetError(f"{where}: max_per_class must be a positive integer, got {cap!r}")

    if dataset == "digits":
        if "path" in spec:
            raise DatasetError(f"{where}: the digits dataset is built in and takes no path (got {spec['path']!r})")
        names, splits, to_tensors = _load_digits()
    else:
        if "path" not in spec:
            raise DatasetError(f"{where}: dataset {dataset!r} needs a path")
        root = Path(spec["path"]).expanduser()
        if not root.is_dir():
            raise DatasetError(f"{root}: dataset directory not found (path of {name!r})")
        names, splits, to_tensors = (_load_idx if dataset == "idx" else _load_folder)(root)
        where = str(root)

    classes = spec.get("classes", names)
    if not isinstance(classes, list) or not classes or len(set(map(str, classes))) != len(classes):
        raise DatasetError(f"{where}: classes must be a non-empty list without repeats, got {classes!r}")
    wanted = [str(c) for c in classes]
    for c in wanted:
        if c not in names:
            raise DatasetError(f"{where}: unknown class {c!r} (available: {', '.join(names)})")
    keep = [names.index(c) for c in wanted]

    rng = np.random.default_rng(seed)  # one generator, drawn from in a fixed order: split, then caps
    if "all" in splits:
        items, labels = splits.pop("all")
        train, test = _stratified_split(labels, keep, names, fraction, rng, where)
        splits = {"train": (items[train], labels[train]), "test": (items[test], labels[test])}
    remap = np.full(len(names), -1)
    remap[keep] = np.arange(len(keep))
    sets = {}
    for split, (items, labels) in splits.items():
        # A seeded choice of at most `cap` per class, then back in dataset order.
        picks = [rng.permutation(np.flatnonzero(labels == c))[:cap] for c in keep]
        missing = [names[c] for c, pick in zip(keep, picks) if not len(pick)]
        if missing:
            raise DatasetError(f"{where}: the {split} split has no images of class {', '.join(missing)}")
        chosen = np.sort(np.concatenate(picks))
        images = torch.cat([_fit(x, image_size, channels) for x in to_tensors(items[chosen])])
        labels = torch.from_numpy(remap[labels[chosen]]).long()
        sets[split] = ImageSet(images.contiguous(), labels, wanted)
    return Task(name, sets["train"], sets["test"])
