"""Data loaders and safetensors checkpoints."""
import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from anp_kernels import data
from anp_kernels.checkpoint import load_state, save_state


def _write_idx(path, array, compress):
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    (gzip.open if compress else open)(path, "wb").write(payload)


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_idx_loader(tmp_path, compress):
    ext = ".gz" if compress else ""
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("t10k", 10)):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte{ext}", rng.integers(0, 256, (n, 28, 28)), compress)
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte{ext}", rng.integers(0, 10, (n,)), compress)
    ds = data.load(f"mnist:{tmp_path}")
    assert ds.x_train.shape == (30, 1, 28, 28) and ds.x_test.shape == (10, 1, 28, 28)
    assert ds.x_train.min() >= 0 and ds.x_train.max() <= 1 and ds.y_train.dtype == torch.int64


def test_mnist_shared_test_split(mnist_dir):
    ds = data.load(f"mnist:{mnist_dir}")
    assert len(ds.x_train) == 8000 and len(ds.x_test) == 2000
    assert torch.bincount(ds.y_train).min() > 600


def test_corrupt_and_missing_data_give_clear_errors(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 20)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="truncated|not an unsigned-byte IDX"):
        data.load(f"mnist:{tmp_path}")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load(f"mnist:{tmp_path / 'nope'}")
    with pytest.raises(FileNotFoundError, match="CIFAR-10 python batches missing"):
        data.load(f"cifar10:{tmp_path}")
    with pytest.raises(ValueError, match="unknown data spec"):
        data.load("imagenet")
    with pytest.raises(ValueError, match="needs the folder"):
        data.load("mnist:")


def _write_mnist(folder, sizes=(("train", 30), ("t10k", 10)), labels=10, ext=".gz"):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in sizes:
        _write_idx(folder / f"{split}-images-idx3-ubyte{ext}", rng.integers(0, 256, (n, 28, 28)), ext == ".gz")
        _write_idx(folder / f"{split}-labels-idx1-ubyte{ext}", rng.integers(0, labels, (n,)), ext == ".gz")


def test_mnist_in_torchvision_layout(tmp_path):
    _write_mnist(tmp_path / "MNIST" / "raw", ext="")
    ds = data.load(f"mnist:{tmp_path}")
    assert ds.x_train.shape == (30, 1, 28, 28) and ds.x_test.shape == (10, 1, 28, 28)


def test_mnist_files_that_do_not_fit_are_refused_by_name(tmp_path):
    _write_mnist(tmp_path / "labels", labels=256)
    with pytest.raises(ValueError, match=r"labels-idx1-ubyte.gz holds label \d+; labels must be in 0..9"):
        data.load(f"mnist:{tmp_path / 'labels'}")
    swapped = tmp_path / "swapped"
    _write_mnist(swapped)
    (swapped / "t10k-images-idx3-ubyte.gz").rename(swapped / "tmp.gz")
    (swapped / "t10k-labels-idx1-ubyte.gz").rename(swapped / "t10k-images-idx3-ubyte.gz")
    (swapped / "tmp.gz").rename(swapped / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(ValueError, match=r"\[N, H, W\] images.*files swapped"):
        data.load(f"mnist:{swapped}")
    counts = tmp_path / "counts"
    _write_mnist(counts)
    _write_idx(counts / "t10k-labels-idx1-ubyte.gz", np.zeros(9), True)
    with pytest.raises(ValueError, match="holds 10 images but t10k-labels-idx1-ubyte.gz 9 labels"):
        data.load(f"mnist:{counts}")
    half = tmp_path / "half"
    _write_mnist(half)
    (half / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte.gz but no train-labels"):
        data.load(f"mnist:{half}")
    small = tmp_path / "small"
    _write_mnist(small, sizes=(("t10k", 100),))
    with pytest.raises(ValueError, match="only the test split .* 100 images"):
        data.load(f"mnist:{small}")


def test_cifar10_python_batches(tmp_path):
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, 4))}
        with open(tmp_path / name, "wb") as f:
            pickle.dump(batch, f)
    ds = data.load(f"cifar10:{tmp_path}")
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)


def test_digits_and_synthetic():
    ds = data.load("digits")
    assert ds.input_shape == (1, 8, 8) and len(ds.x_train) + len(ds.x_test) == 1797
    assert 0 <= ds.x_train.min() and ds.x_train.max() <= 1
    syn = data.load("synthetic")
    assert syn.num_classes == 10 and syn.x_test.shape[1:] == (1, 8, 8)


def test_crop_flip_is_a_padded_window_flipped_half_the_time():
    """Every augmented image is the 4-pixel zero-padded image's window at some offset in [0, 8]^2,
    read left to right or mirrored; all offsets and both directions occur, each about as often."""
    x = torch.rand(400, 3, 32, 32)
    out = data.crop_flip(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.is_contiguous()
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    seen, flips = set(), 0
    for i in range(len(x)):
        found = [(oy, ox, f) for oy in range(9) for ox in range(9) for f in (False, True)
                 if torch.equal(out[i], (lambda w: w.flip(-1) if f else w)(padded[i, :, oy:oy + 32, ox:ox + 32]))]
        assert len(found) == 1, i
        seen.add(found[0][:2])
        flips += found[0][2]
    assert len(seen) == 81 and 150 < flips < 250
    again = data.crop_flip(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # the generator decides everything
    assert data.augment(x, "none", torch.Generator()) is x
    assert data.default_augmentation("cifar10:/any") == "crop-flip"
    assert data.default_augmentation("mnist:/any") == data.default_augmentation("digits") == "none"
    with pytest.raises(ValueError, match="augmentation must be one of"):
        data.augment(x, "mixup", torch.Generator())
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        data.crop_flip(x[0], torch.Generator())


def test_checkpoint_roundtrip_and_corruption(tmp_path):
    state = {"model": {"w": torch.randn(3, 2), "b": torch.zeros(2)}, "epoch": 3, "rng": torch.get_rng_state(),
             "groups": [{"lr": 0.1, "params": [0, 1]}], "name": "x", "none": None, "pair": (1, 2.5)}
    path = tmp_path / "ck.safetensors"
    save_state(path, state)
    back = load_state(path)
    assert torch.equal(back["model"]["w"], state["model"]["w"]) and back["epoch"] == 3
    assert back["groups"] == state["groups"] and back["pair"] == (1, 2.5) and back["none"] is None
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="corrupt"):
        load_state(path)
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError):
        load_state(path)
    with pytest.raises(FileNotFoundError):
        load_state(tmp_path / "missing.safetensors")


def test_a_changed_byte_is_refused_by_the_checksum_and_old_files_still_load(tmp_path):
    """save_state records a SHA-256 of the file's metadata and tensors: one byte changed in a tensor,
    or in the JSON of its metadata, is refused; a file written without the checksum loads as before."""
    from safetensors.torch import load_file, save_file

    from anp_kernels.checkpoint import DIGEST_KEY, read_safetensors

    path = tmp_path / "ck.safetensors"
    save_state(path, {"model": {"w": torch.arange(12.0).view(3, 4)}, "epoch": 7, "lr": 0.125})
    raw = path.read_bytes()
    body = 8 + int.from_bytes(raw[:8], "little")
    weight = bytearray(raw)
    weight[body + 5] ^= 0x01  # one bit of one weight: a finite value, silently different without a checksum
    (tmp_path / "weight.safetensors").write_bytes(bytes(weight))
    assert raw[:body].count(b"0.125") == 1 and raw[body:].count(b"0.125") == 0  # the lr, in the metadata
    setting = raw.replace(b"0.125", b"0.625")  # the same length: the file still parses
    (tmp_path / "setting.safetensors").write_bytes(setting)
    for name in ("weight", "setting"):
        with pytest.raises(ValueError, match="does not match the SHA-256 written with it"):
            load_state(tmp_path / f"{name}.safetensors")
    tensors, meta = read_safetensors(path)
    del meta[DIGEST_KEY]
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata=meta)  # as written before the checksum
    assert load_state(tmp_path / "old.safetensors")["lr"] == 0.125
    assert torch.equal(load_file(str(path))["s.0.0"], torch.arange(12.0).view(3, 4))  # plain safetensors still
