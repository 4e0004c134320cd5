"""Edge datasets: digits, IDX files and image folders become resized, class-subset, seeded tasks."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from analysis.edge.data import DatasetError, read_idx, load_task, write_idx
from analysis.errors import PipelineError

FASHION = Path("/usr/share/datasets/fashion-mnist")


def digits(seed=0, size=16, channels=1, **spec):
    return load_task({"dataset": "digits", **spec}, image_size=size, channels=channels, seed=seed)


def write_idx_dir(root: Path, n_train=30, n_test=12, gz=True) -> Path:
    """An MNIST-layout directory: labels cycle 0..2, each image filled with 80 * its label."""
    root.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 3).astype(np.uint8)
        images = np.repeat(labels * 80, 28 * 28).reshape(n, 28, 28).astype(np.uint8)
        write_idx(root / f"{split}-images-idx3-ubyte{suffix}", images)
        write_idx(root / f"{split}-labels-idx1-ubyte{suffix}", labels)
    return root


def write_folder(root: Path, counts: dict[str, int], size=(10, 7)) -> Path:
    """One folder per class; class k's PNGs are RGB images of a solid colour (k * 100, 50, 200)."""
    for k, (cls, n) in enumerate(counts.items()):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", size, (k * 100, 50, 200)).save(root / cls / f"{i}.png")
    return root


def test_digits_class_subset_is_remapped_resized_and_split_by_class():
    task = digits(classes=[7, "3"])
    for part in (task.train, task.test):
        assert part.classes == ["7", "3"]
        assert part.images.shape[1:] == (1, 16, 16) and part.images.dtype == torch.float32
        assert 0 <= part.images.min() and part.images.max() <= 1 and part.images.max() > 0.9
        assert part.labels.dtype == torch.int64 and set(part.labels.tolist()) == {0, 1}
    # sklearn digits hold 179 sevens and 183 threes; a quarter of each goes to test.
    assert (task.test.labels == 0).sum() == 45 and (task.test.labels == 1).sum() == 46
    assert len(task.train) + len(task.test) == 179 + 183
    train = {tuple(x.flatten().tolist()) for x in task.train.images}
    assert not train & {tuple(x.flatten().tolist()) for x in task.test.images}


def test_digits_are_sklearns_load_digits_read_without_importing_sklearn():
    from sklearn.datasets import load_digits

    from analysis.edge.data import _load_digits

    names, splits, _ = _load_digits()
    images, labels = splits["all"]
    reference = load_digits()
    assert names == [str(c) for c in range(10)]
    assert np.array_equal(images, (reference.images / 16.0).astype(np.float32)[:, None])
    assert np.array_equal(labels, reference.target) and labels.dtype.kind == "i"
    # The edge jobs pay no scikit-learn import (1.3 s each) for the digits.
    code = ("import sys; from analysis.edge.data import load_task; "
            "load_task({'dataset': 'digits', 'classes': [0, 1]}, image_size=8, channels=1, seed=0); "
            "print('sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_digits_without_scikit_learn_or_its_file_name_what_is_missing(monkeypatch, tmp_path):
    import importlib.machinery
    import importlib.util

    from analysis.edge import data

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DatasetError, match="the digits dataset needs scikit-learn installed"):
        data.digits_file()
    empty = importlib.machinery.ModuleSpec("sklearn", None, is_package=True)
    empty.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: empty)
    with pytest.raises(DatasetError, match=rf"{tmp_path}/datasets/data/digits.csv.gz: scikit-learn's digits file"):
        load_task({"dataset": "digits", "classes": [0, 1]}, image_size=8, channels=1, seed=0)


def test_digits_split_is_deterministic_for_a_seed_and_differs_across_seeds():
    a, b, c = digits(seed=1, classes=[0, 1]), digits(seed=1, classes=[0, 1]), digits(seed=2, classes=[0, 1])
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert not torch.equal(a.test.images, c.test.images)


def test_max_per_class_caps_each_split_and_channels_3_repeat_grey():
    task = digits(classes=[1, 2, 5], max_per_class=10, test_fraction=0.5, channels=3, size=8)
    assert task.train.images.shape == (30, 3, 8, 8) and task.test.images.shape == (30, 3, 8, 8)
    assert torch.bincount(task.train.labels).tolist() == [10, 10, 10]
    assert torch.equal(task.train.images[:, 0], task.train.images[:, 2])
    assert len(digits(classes=[1, 2, 5], test_fraction=0.5, size=8).train) > 30


@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
@pytest.mark.parametrize("array", [
    np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
    np.linspace(-1, 1, 10, dtype=np.float32).reshape(5, 2),
    np.array([-3, 70000], dtype=np.int32),
])
def test_idx_round_trip(tmp_path, name, array):
    write_idx(tmp_path / name, array)
    back = read_idx(tmp_path / name)
    assert back.dtype == array.dtype and back.shape == array.shape and np.array_equal(back, array)
    data = (tmp_path / name).read_bytes()
    header = (gzip.decompress(data) if name.endswith(".gz") else data)[:4]
    code = {np.uint8: 0x08, np.float32: 0x0D, np.int32: 0x0C}[array.dtype.type]
    assert header == bytes([0, 0, code, array.ndim])


def test_idx_directory_loads_with_t10k_as_test(tmp_path):
    root = write_idx_dir(tmp_path / "mnist")
    spec = {"dataset": "idx", "path": str(root), "classes": [2, 0]}
    task = load_task(spec, image_size=14, channels=1, seed=0)
    assert task.train.classes == ["2", "0"] and len(task.train) == 20 and len(task.test) == 8
    assert task.test.images.shape == (8, 1, 14, 14)
    # A label-2 image is 160/255 everywhere, label 0 is black: the remapped labels follow the pixels.
    means = task.test.images.mean(dim=(1, 2, 3))
    assert torch.allclose(means[task.test.labels == 0], torch.tensor(160 / 255))
    assert torch.all(means[task.test.labels == 1] == 0)


def test_idx_plain_files_load_too(tmp_path):
    root = write_idx_dir(tmp_path / "plain", gz=False)
    task = load_task({"dataset": "idx", "path": root, "max_per_class": 2}, image_size=28, channels=3, seed=0)
    assert task.train.images.shape == (6, 3, 28, 28) and task.train.classes == ["0", "1", "2"]


def test_wrong_magic_names_the_file_and_the_magic(tmp_path):
    root = write_idx_dir(tmp_path / "bad")
    bad = root / "train-images-idx3-ubyte.gz"
    bad.write_bytes(gzip.compress(bytes.fromhex("12345678") + bytes(100)))
    message = r"train-images-idx3-ubyte\.gz: not an IDX file \(magic number 0x12345678"
    with pytest.raises(DatasetError, match=message):
        load_task({"dataset": "idx", "path": root}, image_size=8, channels=1, seed=0)


def test_truncated_payload_is_refused(tmp_path):
    path = tmp_path / "short-idx3-ubyte"
    write_idx(path, np.zeros((4, 5, 5), np.uint8))
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(DatasetError, match=r"short-idx3-ubyte: IDX payload is 93 bytes.*needs 100"):
        read_idx(path)


def test_missing_idx_file_is_named(tmp_path):
    root = write_idx_dir(tmp_path / "m")
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match=r"missing t10k-labels-idx1-ubyte"):
        load_task({"dataset": "idx", "path": root}, image_size=8, channels=1, seed=0)


def test_folder_dataset_splits_and_converts_rgb_to_luma(tmp_path):
    root = write_folder(tmp_path / "pics", {"cat": 4, "dog": 5})
    task = load_task({"dataset": "folder", "path": root}, image_size=6, channels=1, seed=3)
    assert task.train.classes == ["cat", "dog"] and len(task.train) + len(task.test) == 9
    assert task.train.images.shape[1:] == (1, 6, 6) and torch.bincount(task.test.labels).tolist() == [1, 1]
    dog = task.train.images[task.train.labels == 1]
    assert torch.allclose(dog, torch.tensor((0.299 * 100 + 0.587 * 50 + 0.114 * 200) / 255), atol=1e-6)


def test_folder_with_train_and_test_subfolders_uses_them(tmp_path):
    root = tmp_path / "split"
    write_folder(root / "train", {"a": 3, "b": 2})
    write_folder(root / "test", {"a": 1, "b": 2}, size=(40, 40))
    task = load_task({"dataset": "folder", "path": root, "classes": ["b"]}, image_size=5, channels=3, seed=0)
    assert (len(task.train), len(task.test)) == (2, 2) and task.test.images.shape == (2, 3, 5, 5)
    assert task.test.labels.tolist() == [0, 0] and task.test.classes == ["b"]


def test_folder_errors_name_the_empty_class_and_the_unreadable_image(tmp_path):
    root = write_folder(tmp_path / "p", {"a": 2})
    (root / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"empty: class folder holds no images"):
        load_task({"dataset": "folder", "path": root}, image_size=4, channels=1, seed=0)
    (root / "empty" / "x.png").write_bytes(b"not a png")
    (root / "empty" / "y.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"empty/[xy]\.png: unreadable image"):
        load_task({"dataset": "folder", "path": root}, image_size=4, channels=1, seed=0)


@pytest.mark.parametrize("spec, kwargs, message", [
    ({"dataset": "cifar"}, {}, r"unknown dataset 'cifar' \(choices: digits, idx, folder\)"),
    ({"dataset": "idx", "path": "/no/such/dir"}, {}, r"/no/such/dir: dataset directory not found"),
    ({"dataset": "idx"}, {}, r"dataset 'idx' needs a path"),
    ({"dataset": "digits", "classes": [3, 11]}, {}, r"unknown class '11' \(available: 0, 1, 2"),
    ({"dataset": "digits", "clases": [3]}, {}, r"unknown key 'clases'"),
    ({"dataset": "digits", "test_fraction": 1.0}, {}, r"test_fraction must be a number in \(0, 1\), got 1.0"),
    ({"dataset": "digits", "test_fraction": 0}, {}, r"test_fraction .* got 0"),
    ({"dataset": "digits", "max_per_class": 0}, {}, r"max_per_class must be a positive integer, got 0"),
    ({"dataset": "digits"}, {"channels": 2}, r"channels must be 1 or 3, got 2"),
])
def test_spec_errors_name_the_value(spec, kwargs, message):
    kwargs = {"image_size": 8, "channels": 1, "seed": 0, **kwargs}
    with pytest.raises(DatasetError, match=message) as info:
        load_task(spec, **kwargs)
    assert isinstance(info.value, PipelineError) and "\n" not in str(info.value)


def test_real_fashion_mnist():
    if not FASHION.is_dir():
        pytest.skip(f"{FASHION} is absent (Debian package dataset-fashion-mnist, which .ci/run installs)")
    spec = {"dataset": "idx", "path": str(FASHION), "classes": [0, 9], "max_per_class": 20}
    task = load_task(spec, image_size=16, channels=1, seed=0, name="fashion")
    assert task.name == "fashion" and task.train.classes == ["0", "9"]
    assert task.train.images.shape == (40, 1, 16, 16) and task.test.images.shape == (40, 1, 16, 16)
    assert torch.bincount(task.test.labels).tolist() == [20, 20] and task.train.images.std() > 0.1
