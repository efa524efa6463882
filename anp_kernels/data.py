"""Datasets as tensors, inputs in [0, 1] (NCHW float32), labels int64. Nothing is downloaded.

Specs: "digits" (scikit-learn's 8x8 digits, embedded), "mnist:PATH" (IDX files, gzipped or
not, in PATH or torchvision's PATH/MNIST/raw; with only the t10k split present, its first 8,000
images train and the rest are held out), "cifar10:PATH" (the python batches), "synthetic" (class
templates plus noise).

Training augmentation (`augment`) is the original ANP-VS code's: CIFAR-10 batches are padded by 4
zero pixels, randomly cropped back to 32x32 and flipped left-right with probability 1/2; MNIST and
the rest are used as they are.
"""
from __future__ import annotations

import gzip
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ._extras import require
from .nn.mask import host_to_device


@dataclass
class Dataset:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple:
        return tuple(self.x_train.shape[1:])


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise ValueError(f"cannot read IDX file {path}: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 8:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {body.size}")
    return body.reshape(dims)


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (root / name).exists():
            return root / name
    return None


MNIST_TEST_IMAGES = "t10k-images-idx3-ubyte"
MNIST_TRAIN_FROM_TEST = 8000  # only the test split given: its first 8,000 train, the rest held out


def _mnist_folder(root: Path) -> Path:
    """The folder holding the IDX files: `root` itself, or torchvision's `root/MNIST/raw` or `root/raw`."""
    for folder in (root, root / "MNIST" / "raw", root / "raw"):
        if _find(folder, MNIST_TEST_IMAGES) is not None:
            return folder
    return root


def _mnist_split(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    """One split's images [N, H, W] and labels [N] in 0..9, read and checked as a pair."""
    x, y = _read_idx(images), _read_idx(labels)
    if x.ndim != 3 or y.ndim != 1:
        raise ValueError(f"MNIST: {images.name} must hold [N, H, W] images and {labels.name} [N] labels, "
                         f"found shapes {x.shape} and {y.shape} (files swapped?)")
    if len(x) != len(y):
        raise ValueError(f"MNIST: {images.name} holds {len(x)} images but {labels.name} {len(y)} labels")
    if len(y) and y.max() > 9:
        raise ValueError(f"MNIST: {labels.name} holds label {int(y.max())}; labels must be in 0..9")
    return x, y


def load_mnist(root: str | Path) -> Dataset:
    """MNIST (or Fashion-MNIST) IDX files, gzipped or not, from `root` (or torchvision's root/MNIST/raw).
    With only the test split there, its first 8,000 images train and the rest are held out."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"MNIST folder {root} does not exist")
    folder = _mnist_folder(root)
    test_x, test_y = _find(folder, MNIST_TEST_IMAGES), _find(folder, "t10k-labels-idx1-ubyte")
    train_x, train_y = _find(folder, "train-images-idx3-ubyte"), _find(folder, "train-labels-idx1-ubyte")
    if test_x is None or test_y is None:
        raise FileNotFoundError(f"no t10k-images-idx3-ubyte[.gz] / t10k-labels-idx1-ubyte[.gz] in {root} "
                                "(nor in its MNIST/raw or raw)")
    if (train_x is None) != (train_y is None):
        found, lacking = (train_x, "train-labels") if train_y is None else (train_y, "train-images")
        raise FileNotFoundError(f"MNIST: {folder} has {found.name} but no {lacking} file beside it")
    xt, yt = _mnist_split(test_x, test_y)
    if train_x is not None:
        xs, ys = _mnist_split(train_x, train_y)
    elif len(xt) <= MNIST_TRAIN_FROM_TEST:
        raise ValueError(f"MNIST: only the test split in {folder}, with {len(xt)} images: the first "
                         f"{MNIST_TRAIN_FROM_TEST:,} train and the rest are held out, so it needs more")
    else:
        n = MNIST_TRAIN_FROM_TEST
        xs, ys, xt, yt = xt[:n], yt[:n], xt[n:], yt[n:]
    if xs.shape[1:] != xt.shape[1:]:
        raise ValueError(f"MNIST: training images are {xs.shape[1:]}, test images {xt.shape[1:]}")
    to_x = lambda a: torch.from_numpy(a.astype(np.float32) / 255.0).unsqueeze(1)  # noqa: E731
    to_y = lambda a: torch.from_numpy(a.astype(np.int64))  # noqa: E731
    return Dataset("mnist", to_x(xs), to_y(ys), to_x(xt), to_y(yt), 10)


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR-10 batch holds: dicts, lists, bytes, numbers and numpy arrays.
    Any other global (os.system, builtins.eval, ...) is refused, so a crafted file cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of a CIFAR-10 batch")
        return super().find_class(module, name)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images [N, 3, 32, 32] uint8, labels [N] int64) of one CIFAR-10 python batch, safely."""
    try:
        with open(path, "rb") as f:
            d = _BatchUnpickler(f, encoding="bytes").load()
        if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
            raise ValueError("not a dict with b'data' and b'labels'")
        x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(d[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, ValueError, TypeError, EOFError, OSError, AttributeError, KeyError,
            IndexError, RecursionError) as exc:
        raise ValueError(f"cannot read CIFAR-10 batch {path}: {exc}") from exc
    if len(x) != len(y) or (len(y) and (y.min() < 0 or y.max() > 9)):
        raise ValueError(f"CIFAR-10 batch {path}: {len(x)} images, {len(y)} labels in range [0, 9] expected")
    return x, y


def load_cifar10(root: str | Path) -> Dataset:
    root = Path(root)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    files = [root / f"data_batch_{i}" for i in range(1, 6)]
    missing = [f.name for f in files + [root / "test_batch"] if not f.exists()]
    if missing:
        raise FileNotFoundError(f"CIFAR-10 python batches missing in {root}: {missing}")

    parts = [read_cifar_batch(f) for f in files]
    xs, ys = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    xt, yt = read_cifar_batch(root / "test_batch")
    to_x = lambda a: torch.from_numpy(a.astype(np.float32) / 255.0)  # noqa: E731
    return Dataset("cifar10", to_x(xs), torch.from_numpy(ys), to_x(xt), torch.from_numpy(yt), 10)


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    d = require("sklearn.datasets", "eval").load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = int(len(x) * test_fraction)
    test, train = perm[:n_test], perm[n_test:]
    return Dataset("digits", x[train], y[train], x[test], y[test], 10)


def load_synthetic(n_train: int = 1024, n_test: int = 256, num_classes: int = 10, size: int = 8,
                   seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    templates = torch.rand(num_classes, 1, size, size, generator=g)

    def draw(n):
        y = torch.randint(0, num_classes, (n,), generator=g)
        x = (templates[y] + 0.15 * torch.randn(n, 1, size, size, generator=g)).clamp(0, 1)
        return x, y

    (xs, ys), (xt, yt) = draw(n_train), draw(n_test)
    return Dataset("synthetic", xs, ys, xt, yt, num_classes)


def load(spec: str) -> Dataset:
    """A dataset from its spec: digits | synthetic | mnist:PATH | cifar10:PATH."""
    kind, _, path = spec.partition(":")
    if kind == "digits" and not path:
        return load_digits()
    if kind == "synthetic" and not path:
        return load_synthetic()
    if kind in ("mnist", "cifar10"):
        if not path:
            raise ValueError(f"--data {kind}:PATH needs the folder holding the files")
        return load_mnist(path) if kind == "mnist" else load_cifar10(path)
    raise ValueError(f"unknown data spec {spec!r}; use digits, synthetic, mnist:PATH or cifar10:PATH")


AUGMENTATIONS = ("none", "crop-flip")


def default_augmentation(spec: str) -> str:
    """What the original code does to this data's training batches: crop-flip for CIFAR-10, else none."""
    return "crop-flip" if spec.partition(":")[0] == "cifar10" else "none"


def resolve_augmentation(augment: str | None, spec: str) -> str:
    """An --augment setting checked, or for None the data's default (`default_augmentation`)."""
    if augment is None:
        return default_augmentation(spec)
    if augment not in AUGMENTATIONS:
        raise ValueError(f"--augment must be one of {AUGMENTATIONS}, got {augment!r}")
    return augment


def crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Each image zero-padded by `pad`, cropped back to its size at a random offset, and flipped
    left-right with probability 1/2 (the draws come from `generator`, on the CPU)."""
    if x.dim() != 4:
        raise ValueError(f"crop_flip takes [N, C, H, W] images, got shape {tuple(x.shape)}")
    n, _, h, w = x.shape
    offsets = host_to_device(torch.randint(0, 2 * pad + 1, (2, n), generator=generator), x.device)
    flip = host_to_device(torch.rand(n, generator=generator) < 0.5, x.device)  # the host does not wait
    rows = offsets[0, :, None] + torch.arange(h, device=x.device)
    cols = offsets[1, :, None] + torch.arange(w, device=x.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    padded = F.pad(x, (pad, pad, pad, pad))
    picked = padded[torch.arange(n, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return picked.permute(0, 3, 1, 2).contiguous()  # advanced indices first: [N, H, W, C] -> NCHW


def augment(x: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """A training batch augmented by `kind` (one of AUGMENTATIONS)."""
    if kind == "none":
        return x
    if kind == "crop-flip":
        return crop_flip(x, generator)
    raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, got {kind!r}")
