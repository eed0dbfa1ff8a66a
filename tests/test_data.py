"""Tests for qssm.data: shapes, splits, normalization, IDX parsing, option handling.

No test touches the network: MNIST files are written into tmp_path, and the
download path is exercised with file:// mirrors.
"""

import csv
import gzip
import hashlib
import struct
from collections import Counter

import numpy as np
import pytest
import torch

from qssm import data
from qssm.data import DATASETS, DataError, Dataset, Split, load_dataset, read_idx

ZERO_PIXEL = -0.1307 / 0.3081
FULL_PIXEL = (1.0 - 0.1307) / 0.3081
MNIST_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
TYPE_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D}


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode ``array`` in the IDX format, written out independently of qssm.data."""
    header = bytes([0, 0, TYPE_CODES[array.dtype.type], array.ndim])
    dims = b"".join(struct.pack(">I", d) for d in array.shape)
    return header + dims + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_mnist(root, n_train=12, n_test=5, compress=("train-images-idx3-ubyte",), seed=1):
    """Write tiny MNIST IDX files (28x28 images) under ``root``; names in ``compress`` get .gz."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    root.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        if name in compress:
            (root / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(array)))
        else:
            (root / name).write_bytes(idx_bytes(array))
    return arrays


def rows(x: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in x}


# ------------------------------------------------------------------ registry and options


def test_registry_names():
    assert set(DATASETS) == {"smnist5k", "smnist", "psmnist", "sdigits", "multiscale"}


def test_unknown_dataset_lists_choices():
    with pytest.raises(DataError) as err:
        load_dataset("cifar")
    for name in DATASETS:
        assert name in str(err.value)


def test_unknown_option_is_rejected():
    with pytest.raises(DataError, match="bogus"):
        load_dataset("multiscale", bogus=3)
    # an option of another dataset is unknown here too
    with pytest.raises(DataError, match="test_fraction"):
        load_dataset("multiscale", test_fraction=0.5)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_limit_must_be_positive_int(bad):
    with pytest.raises(DataError, match="limit_train"):
        load_dataset("multiscale", n_train=10, n_test=5, seq_len=16, limit_train=bad)


def test_limits_take_a_prefix():
    full = load_dataset("multiscale", n_train=30, n_test=20, seq_len=16)
    small = load_dataset(
        "multiscale", n_train=30, n_test=20, seq_len=16, limit_train=7, limit_test=3
    )
    assert small.train.x.shape == (7, 16, 2) and small.test.x.shape == (3, 16, 2)
    assert torch.equal(small.train.x, full.train.x[:7])
    assert torch.equal(small.train.y, full.train.y[:7])
    assert torch.equal(small.test.x, full.test.x[:3])
    big = load_dataset("multiscale", n_train=30, n_test=20, seq_len=16, limit_train=1000)
    assert len(big.train) == 30


def test_split_rejects_bad_shapes():
    with pytest.raises(DataError):
        Split(torch.zeros(4, 3), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(DataError):
        Split(torch.zeros(4, 3, 1), torch.zeros(5, dtype=torch.int64))
    with pytest.raises(DataError):
        Split(torch.zeros(4, 3, 1, dtype=torch.float64), torch.zeros(4, dtype=torch.int64))


def test_dataset_properties():
    split = Split(torch.zeros(2, 9, 3), torch.zeros(2, dtype=torch.int64))
    ds = Dataset(name="t", train=split, test=split, n_classes=2)
    assert ds.seq_len == 9 and ds.d_input == 3


# ------------------------------------------------------------------ smnist5k


@pytest.fixture(scope="module")
def smnist5k():
    return load_dataset("smnist5k", seed=0)


@pytest.fixture(scope="module")
def mnist5k_rows():
    """(pixels, label) rows of the bundled CSV, read with the csv module: 784 pixels, then label."""
    with gzip.open(data.mnist5k_path(), "rt") as handle:
        table = [tuple(int(float(v)) for v in row) for row in csv.reader(handle)]
    assert len(table) == 5000 and all(len(row) == 785 for row in table)
    return Counter((row[:-1], row[-1]) for row in table)


def test_smnist5k_shapes_and_split(smnist5k):
    assert smnist5k.name == "smnist5k" and smnist5k.n_classes == 10
    assert smnist5k.seq_len == 784 and smnist5k.d_input == 1
    assert smnist5k.train.x.shape == (4000, 784, 1) and smnist5k.test.x.shape == (1000, 784, 1)
    assert smnist5k.train.x.dtype == torch.float32 and smnist5k.train.y.dtype == torch.int64
    assert torch.bincount(smnist5k.train.y, minlength=10).tolist() == [400] * 10
    assert torch.bincount(smnist5k.test.y, minlength=10).tolist() == [100] * 10
    # a short prefix already mixes classes (the CSV itself is sorted by label)
    assert len(set(smnist5k.train.y[:50].tolist())) > 3


def test_smnist5k_train_test_disjoint(smnist5k):
    train, test = rows(smnist5k.train.x), rows(smnist5k.test.x)
    assert len(train) == 4000 and len(test) == 1000
    assert not train & test


def test_smnist5k_matches_csv_with_mnist_normalization(smnist5k, mnist5k_rows):
    x = torch.cat([smnist5k.train.x, smnist5k.test.x])[:, :, 0].double()
    y = torch.cat([smnist5k.train.y, smnist5k.test.y])
    pixels = (x * 0.3081 + 0.1307) * 255
    assert torch.allclose(pixels, pixels.round(), atol=1e-3)
    got = Counter(
        (tuple(int(v) for v in row), int(label))
        for row, label in zip(pixels.round().long().tolist(), y.tolist(), strict=True)
    )
    assert got == mnist5k_rows
    assert x.min().item() == pytest.approx(ZERO_PIXEL, abs=1e-6)
    assert x.max().item() == pytest.approx(FULL_PIXEL, abs=1e-6)


def test_smnist5k_seeded(smnist5k):
    again = load_dataset("smnist5k", seed=0)
    assert torch.equal(again.train.x, smnist5k.train.x)
    assert torch.equal(again.test.y, smnist5k.test.y)
    other = load_dataset("smnist5k", seed=1)
    assert rows(other.test.x) != rows(smnist5k.test.x)
    assert torch.bincount(other.test.y, minlength=10).tolist() == [100] * 10


# ------------------------------------------------------------------ IDX parser


@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.array([1, -2, 70000, -(2**31)], dtype=np.int32),
        np.array([[0.5, -1.25], [3.0, 1e-3]], dtype=np.float32),
        np.array([-1, 300, -300], dtype=np.int16),
    ],
)
@pytest.mark.parametrize("compressed", [False, True])
def test_read_idx_round_trip(tmp_path, array, compressed):
    payload = idx_bytes(array)
    path = tmp_path / ("a.idx.gz" if compressed else "a.idx")
    path.write_bytes(gzip.compress(payload) if compressed else payload)
    got = read_idx(path)
    assert got.shape == array.shape
    assert got.dtype == array.dtype  # native byte order
    np.testing.assert_array_equal(got, array)


def test_read_idx_known_bytes(tmp_path):
    # hand-written: uint8, 1 dim of length 3, values 7 8 9
    (tmp_path / "f").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x03\x07\x08\x09")
    np.testing.assert_array_equal(read_idx(tmp_path / "f"), [7, 8, 9])


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (idx_bytes(np.zeros((2, 5), np.uint8))[:-3], "truncated"),
        (idx_bytes(np.zeros((2, 5), np.uint8)) + b"\x00", "trailing"),
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x00", "magic"),
        (b"PK\x03\x04 zip file", "magic"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x00", "type code"),
        (b"\x00\x00\x08\x03\x00\x00", "header"),
        (b"\x00", "magic"),
        (b"", "magic"),
    ],
)
def test_read_idx_rejects_bad_files(tmp_path, payload, match):
    path = tmp_path / "bad"
    path.write_bytes(payload)
    with pytest.raises(DataError, match=match) as err:
        read_idx(path)
    assert "bad" in str(err.value)  # names the file


def test_read_idx_rejects_truncated_gzip(tmp_path):
    path = tmp_path / "bad.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(100, np.uint8)))[:-10])
    with pytest.raises(DataError, match="gzip"):
        read_idx(path)


# ------------------------------------------------------------------ smnist


def test_smnist_from_root(tmp_path):
    arrays = write_mnist(tmp_path)
    ds = load_dataset("smnist", root=str(tmp_path))
    assert ds.train.x.shape == (12, 784, 1) and ds.test.x.shape == (5, 784, 1)
    assert ds.n_classes == 10 and ds.seq_len == 784 and ds.d_input == 1
    images = arrays["train-images-idx3-ubyte"].reshape(12, 784).astype(np.float64)
    expected = (images / 255 - 0.1307) / 0.3081
    np.testing.assert_allclose(ds.train.x[:, :, 0].numpy(), expected, atol=1e-5)
    np.testing.assert_array_equal(ds.train.y.numpy(), arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(ds.test.y.numpy(), arrays["t10k-labels-idx1-ubyte"])
    # row-major pixel order: step 28 is row 1, column 0
    assert ds.test.x[2, 28, 0].item() == pytest.approx(
        (arrays["t10k-images-idx3-ubyte"][2, 1, 0] / 255 - 0.1307) / 0.3081, abs=1e-5
    )


def test_smnist_root_from_env(tmp_path, monkeypatch):
    write_mnist(tmp_path / "m", compress=())
    monkeypatch.setenv("QSSM_DATA", str(tmp_path / "m"))
    assert len(load_dataset("smnist").train) == 12


def test_smnist_missing_file_names_it(tmp_path):
    write_mnist(tmp_path, compress=())
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError) as err:
        load_dataset("smnist", root=str(tmp_path))
    message = str(err.value)
    assert "t10k-labels-idx1-ubyte" in message and str(tmp_path) in message
    assert "download" in message


def test_smnist_rejects_wrong_image_size(tmp_path):
    write_mnist(tmp_path, compress=())
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((5, 8, 8), np.uint8)))
    with pytest.raises(DataError, match="28x28"):
        load_dataset("smnist", root=str(tmp_path))


def test_smnist_download_from_mirrors(tmp_path, monkeypatch):
    """download=True fetches the .gz files (here from a local file:// mirror), skipping a
    mirror that lacks them, checks MD5 and leaves no temporary files."""
    mirror = tmp_path / "mirror"
    arrays = write_mnist(mirror, compress=MNIST_NAMES)
    md5s = {f"{n}.gz": hashlib.md5((mirror / f"{n}.gz").read_bytes()).hexdigest() for n in arrays}
    monkeypatch.setattr(data, "MNIST_FILES", md5s)
    monkeypatch.setattr(
        data, "MNIST_MIRRORS", ((tmp_path / "empty").as_uri() + "/", mirror.as_uri() + "/")
    )
    root = tmp_path / "cache"
    with pytest.raises(DataError, match="download"):
        load_dataset("smnist", root=str(root))
    ds = load_dataset("smnist", root=str(root), download=True)
    assert len(ds.train) == 12 and len(ds.test) == 5
    assert sorted(p.name for p in root.iterdir()) == sorted(md5s)


def test_smnist_download_rejects_bad_checksum(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    write_mnist(mirror, compress=MNIST_NAMES)
    monkeypatch.setattr(data, "MNIST_FILES", dict.fromkeys(data.MNIST_FILES, "0" * 32))
    monkeypatch.setattr(data, "MNIST_MIRRORS", (mirror.as_uri() + "/",))
    root = tmp_path / "cache"
    with pytest.raises(DataError, match="MD5"):
        load_dataset("smnist", root=str(root), download=True)
    assert list(root.iterdir()) == []


# ------------------------------------------------------------------ psmnist


def test_psmnist_is_fixed_permutation_of_base(smnist5k):
    ds = load_dataset("psmnist", base="smnist5k", seed=0)
    perm = np.random.default_rng(0).permutation(784)  # documented: default_rng(permutation_seed)
    assert not np.array_equal(perm, np.arange(784))
    assert torch.equal(ds.train.x, smnist5k.train.x[:, perm])
    assert torch.equal(ds.test.x, smnist5k.test.x[:, perm])
    assert torch.equal(ds.train.y, smnist5k.train.y)
    # each sequence holds exactly the base sequence's values
    assert torch.equal(ds.test.x.sort(dim=1).values, smnist5k.test.x.sort(dim=1).values)
    assert ds.name == "psmnist" and ds.seq_len == 784 and ds.n_classes == 10


def test_psmnist_permutation_seed(tmp_path):
    write_mnist(tmp_path)
    base = load_dataset("smnist", root=str(tmp_path))
    a = load_dataset("psmnist", root=str(tmp_path), permutation_seed=3)
    b = load_dataset("psmnist", root=str(tmp_path), permutation_seed=3)
    c = load_dataset("psmnist", root=str(tmp_path), permutation_seed=4)
    assert torch.equal(a.train.x, b.train.x)
    assert not torch.equal(a.train.x, c.train.x)
    perm = np.random.default_rng(3).permutation(784)
    assert torch.equal(a.train.x, base.train.x[:, perm])
    assert torch.equal(a.test.x, base.test.x[:, perm])


def test_psmnist_rejects_unknown_base():
    with pytest.raises(DataError, match="smnist5k"):
        load_dataset("psmnist", base="sdigits")


# ------------------------------------------------------------------ sdigits


def test_sdigits():
    ds = load_dataset("sdigits", seed=0)
    assert ds.seq_len == 64 and ds.d_input == 1 and ds.n_classes == 10
    assert len(ds.train) + len(ds.test) == 1797
    assert ds.train.x.dtype == torch.float32 and ds.train.y.dtype == torch.int64
    assert set(ds.train.y.tolist()) == set(range(10)) == set(ds.test.y.tolist())
    # stratified 20% test: each class count is round(0.2 * class size), i.e. 35-37
    assert all(35 <= c <= 37 for c in torch.bincount(ds.test.y).tolist())
    assert ds.train.x.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert ds.train.x.std().item() == pytest.approx(1.0, abs=1e-3)
    again = load_dataset("sdigits", seed=0)
    assert torch.equal(again.test.x, ds.test.x)
    other = load_dataset("sdigits", seed=1, test_fraction=0.5)
    assert abs(len(other.test) - 1797 / 2) <= 10


def test_sdigits_rejects_bad_fraction():
    with pytest.raises(DataError, match="test_fraction"):
        load_dataset("sdigits", test_fraction=1.0)


# ------------------------------------------------------------------ multiscale


def test_multiscale_shapes_and_determinism():
    ds = load_dataset("multiscale", seed=5, n_train=40, n_test=10, seq_len=32)
    assert ds.train.x.shape == (40, 32, 2) and ds.test.x.shape == (10, 32, 2)
    assert ds.n_classes == 4 and ds.train.x.dtype == torch.float32
    assert ds.train.y.min() >= 0 and ds.train.y.max() < 4
    again = load_dataset("multiscale", seed=5, n_train=40, n_test=10, seq_len=32)
    assert torch.equal(ds.train.x, again.train.x) and torch.equal(ds.test.y, again.test.y)
    other = load_dataset("multiscale", seed=6, n_train=40, n_test=10, seq_len=32)
    assert not torch.equal(ds.train.x, other.train.x)
    # the test set does not depend on n_train
    more = load_dataset("multiscale", seed=5, n_train=80, n_test=10, seq_len=32)
    assert torch.equal(ds.test.x, more.test.x)


def test_multiscale_defaults():
    ds = load_dataset("multiscale", limit_train=4, limit_test=4)
    assert ds.seq_len == 256 and ds.d_input == 2 and ds.n_classes == 4
    full = load_dataset("multiscale")
    assert len(full.train) == 2000 and len(full.test) == 500
    assert set(full.train.y.tolist()) == {0, 1, 2, 3}


@pytest.mark.parametrize("n_symbols", [2, 3])
def test_multiscale_label_from_early_and_late_pulse(n_symbols):
    seq_len = 40
    ds = load_dataset(
        "multiscale", seed=2, n_train=60, n_test=5, seq_len=seq_len, noise=0.0, n_symbols=n_symbols
    )
    assert ds.n_classes == n_symbols**2
    for x, y in zip(ds.train.x, ds.train.y, strict=True):
        times, channels = torch.nonzero(x, as_tuple=True)
        assert len(times) == 2 and torch.all(x[times, channels] == 1.0)
        assert times[0] < seq_len // 4 and times[1] >= seq_len - seq_len // 4
        assert y.item() == channels[0].item() * n_symbols + channels[1].item()
    assert len(set(ds.train.y.tolist())) == n_symbols**2


def test_multiscale_noise():
    ds = load_dataset("multiscale", n_train=200, n_test=1, seq_len=64, noise=0.5)
    assert ds.train.x.std().item() == pytest.approx(np.sqrt(0.25 + 2 / 128), rel=0.05)


def test_multiscale_rejects_bad_options():
    with pytest.raises(DataError, match="seq_len"):
        load_dataset("multiscale", seq_len=4)
