"""Data set registry and loading, on real data where the shared folder is available.

The shared folder (TECLI_DATA_DIR) is read-only for the tests: every test that reads
it checks that it is unchanged afterwards. The cache always goes to a temporary folder.
"""

import os
import shutil
import stat
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from tecli.data import DATASET_NAMES, DataSplits, load_dataset
from tecli.errors import UserError

needs_data = pytest.mark.skipif(not os.environ.get("TECLI_DATA_DIR"), reason="TECLI_DATA_DIR not set")
MNIST_GZ = tuple(f"{s}-{k}-ubyte.gz" for s in ("train", "t10k") for k in ("images-idx3", "labels-idx1"))


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("TECLI_CACHE_DIR", str(path))
    return path


@pytest.fixture
def shared():
    return Path(os.environ["TECLI_DATA_DIR"])


def listing(folder: Path) -> dict:
    """Every entry under folder with its size and mtime: what 'unmodified' means here."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def assert_normalized(x: torch.Tensor):
    mean = x.mean(dim=(0, 2, 3), dtype=torch.float64)
    std = x.to(torch.float64).std(dim=(0, 2, 3), correction=0)
    np.testing.assert_allclose(mean.numpy(), 0.0, atol=1e-5)
    np.testing.assert_allclose(std.numpy(), 1.0, atol=1e-5)


def assert_well_formed(d: DataSplits, n_train: int, n_test: int, shape: tuple):
    assert d.input_shape == shape
    assert d.x_train.shape == (n_train, *shape) and d.x_test.shape == (n_test, *shape)
    assert d.x_train.dtype == d.x_test.dtype == torch.float32
    assert d.x_train.is_contiguous() and d.x_test.is_contiguous()
    assert d.y_train.dtype == d.y_test.dtype == torch.int64
    assert d.y_train.shape == (n_train,) and d.y_test.shape == (n_test,)
    assert d.n_classes == 10
    assert set(d.y_train.unique().tolist()) == set(range(10))
    assert 0 <= d.y_test.min() and d.y_test.max() <= 9
    assert_normalized(d.x_train)


def test_registry_names():
    assert DATASET_NAMES == ("digits", "usps", "mnist", "fashionmnist", "cifar10", "svhn", "stl10")


def test_unknown_name_lists_valid_names():
    with pytest.raises(UserError) as err:
        load_dataset("imagenet")
    message = str(err.value)
    assert "\n" not in message and "'imagenet'" in message
    assert all(name in message for name in DATASET_NAMES)


def test_digits(cache, tmp_path):
    d = load_dataset("digits", tmp_path / "empty")
    assert d.name == "digits" and d.copy == "scikit-learn load_digits"
    assert_well_formed(d, 1437, 360, (1, 8, 8))
    # Stratified: every class is in the test split in its share (about 36 of 360).
    counts = torch.bincount(d.y_test, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    assert not (cache / "tensors").exists()  # nothing to cache for the bundled set
    again = load_dataset("digits")
    assert torch.equal(again.x_test, d.x_test) and torch.equal(again.y_train, d.y_train)


def write_npz(path: Path, x_train, y_train, x_test, y_test):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def test_npz_form_gray_uint8(tmp_path, cache):
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (30, 28, 28), dtype=np.uint8)
    x_test = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    y_train, y_test = np.arange(30) % 10, np.arange(7)
    write_npz(tmp_path / "data" / "mnist.npz", x_train, y_train, x_test, y_test)

    d = load_dataset("mnist", tmp_path / "data")
    assert d.copy == "npz mnist.npz"
    assert_well_formed(d, 30, 7, (1, 28, 28))
    mean, std = x_train.astype(np.float64).mean(), x_train.astype(np.float64).std()
    np.testing.assert_allclose(d.x_test[:, 0].numpy(), (x_test - mean) / std, rtol=1e-5, atol=1e-5)
    assert d.y_test.tolist() == y_test.tolist()
    assert len(list((cache / "tensors").glob("mnist-npz-mnist-npz-*.npz"))) == 1

    # A changed source is decoded afresh, not served from the cache of the old one.
    write_npz(tmp_path / "data" / "mnist.npz", x_train, y_train, x_test, (y_test + 1) % 10)
    os.utime(tmp_path / "data" / "mnist.npz", ns=(1, 1))
    assert load_dataset("mnist", tmp_path / "data").y_test.tolist() == ((y_test + 1) % 10).tolist()


def test_npz_form_color_float_channels_last(tmp_path):
    rng = np.random.default_rng(1)
    x_train = rng.random((40, 32, 32, 3))  # float64 in [0, 1], N x H x W x C
    x_train[..., 2] *= 0.5
    x_test = rng.random((10, 32, 32, 3))
    write_npz(tmp_path / "svhn.npz", x_train, np.arange(40) % 10, x_test, np.arange(10))

    d = load_dataset("svhn", tmp_path)
    assert d.copy == "npz svhn.npz"
    assert_well_formed(d, 40, 10, (3, 32, 32))
    for c in range(3):  # each channel normalized with its own training statistics
        mean, std = x_train[..., c].mean(), x_train[..., c].std()
        expected = (x_test[..., c] - mean) / std
        np.testing.assert_allclose(d.x_test[:, c].numpy(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "shape, labels, complaint",
    [
        ((28, 28, 3), np.arange(5), "(28, 28, 3)"),
        ((32, 32), np.arange(5), "(32, 32)"),
        ((28, 28), np.arange(5) + 6, "labels"),  # label 10 in a 10-class set
    ],
)
def test_npz_form_rejects_wrong_contents(tmp_path, shape, labels, complaint):
    x = np.zeros((5, *shape), np.uint8)
    write_npz(tmp_path / "mnist.npz", x, labels, x, labels)
    with pytest.raises(UserError) as err:
        load_dataset("mnist", tmp_path)
    message = str(err.value)
    assert str(tmp_path / "mnist.npz") in message and complaint in message and "\n" not in message


class BrokenDownload:
    """urlopen stand-in: the connection dies after the first chunk, leaving a partial file.

    It also records what the data root and the cache's download folder held mid-download.
    """

    def __init__(self, root: Path, cache: Path):
        self.root, self.cache, self.seen = root, cache, None

    def __call__(self, request, *args, **kwargs):
        self.url = request.full_url  # torchvision compares it to follow redirects
        self.sent = False
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    length = 10**6

    def read(self, size=-1):
        if self.sent:
            folders = (self.root, self.cache / "downloads")
            self.seen = tuple(sorted(p.name for p in d.iterdir()) if d.exists() else [] for d in folders)
            raise ConnectionResetError("connection reset by test")
        self.sent = True
        return b"\0" * 1000


@pytest.mark.parametrize("read_only", [False, True])
def test_missing_data_fails_cleanly_offline(tmp_path, cache, monkeypatch, read_only):
    root = tmp_path / "data"
    root.mkdir()
    network = BrokenDownload(root, cache)
    monkeypatch.setattr(urllib.request, "urlopen", network)
    if read_only:
        root.chmod(0o555)
    try:
        with pytest.raises(UserError) as err:
            load_dataset("svhn", root)
    finally:
        root.chmod(0o755)
    message = str(err.value)
    assert "\n" not in message
    expected = ("'svhn'", "train_32x32.mat", "test_32x32.mat", "svhn.npz", str(root), "TECLI_DATA_DIR")
    assert all(part in message for part in expected)
    assert "connection reset by test" in message  # the reason the download failed
    # The download went to a temporary folder: in the root if writable, else in the cache ...
    in_root, in_cache = network.seen
    assert [len(in_root), len(in_cache)] == ([0, 1] if read_only else [1, 0])
    assert all(name.startswith(".tecli-download-") for name in in_root + in_cache)
    # ... and the partial file went with it.
    assert listing(root) == {}
    assert listing(cache / "downloads") == {}


@needs_data
def test_usps_reads_the_hdf5_copy(shared, cache):
    from torchvision.datasets import USPS

    before = listing(shared)
    d = load_dataset("usps")
    assert d.name == "usps" and d.copy == "hdf5 usps.h5"  # usps.bz2 (training) is not in the shared folder
    assert_well_formed(d, 7291, 2007, (1, 16, 16))
    libsvm_test = USPS(str(shared), train=False, download=False)
    assert d.y_test.tolist() == list(libsvm_test.targets)
    # Same images as the LIBSVM copy up to pixel scaling: strongly correlated pixel for pixel.
    r = np.corrcoef(d.x_test.numpy().ravel(), libsvm_test.data.astype(np.float64).ravel())[0, 1]
    assert r > 0.9
    assert len(list((cache / "tensors").glob("usps-hdf5-usps-h5-*.npz"))) == 1
    assert listing(shared) == before


@needs_data
@pytest.mark.parametrize(
    "name, folder, first_train, first_test", [("mnist", "MNIST", 5, 7), ("fashionmnist", "FashionMNIST", 9, 9)]
)
def test_mnist_family_from_the_shared_gz_files(shared, cache, name, folder, first_train, first_test):
    before = listing(shared)
    d = load_dataset(name)
    assert d.copy == f"torchvision {folder}/raw/*.gz"
    assert_well_formed(d, 60000, 10000, (1, 28, 28))
    assert (d.y_train[0].item(), d.y_test[0].item()) == (first_train, first_test)
    assert (cache / "extracted" / folder / "raw" / "train-images-idx3-ubyte").stat().st_size == 47040016
    assert listing(shared) == before


@needs_data
def test_mnist_from_a_read_only_folder(shared, tmp_path, cache):
    root = tmp_path / "ro"
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in MNIST_GZ:
        shutil.copy2(shared / "MNIST" / "raw" / f, raw / f)
    for p in (raw / f for f in MNIST_GZ):
        p.chmod(0o444)
    for p in (raw, raw.parent, root):
        p.chmod(0o555)
    before = listing(root)
    try:
        d = load_dataset("mnist", root)
    finally:
        for p in (root, raw.parent, raw):
            p.chmod(0o755)
    assert d.copy == "torchvision MNIST/raw/*.gz"
    assert d.x_train.shape == (60000, 1, 28, 28) and d.y_train[0].item() == 5
    assert listing(root) == before
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o444 for p in raw.iterdir())


@needs_data
def test_cifar10_from_npz_and_the_tensor_cache(shared, cache, monkeypatch):
    before = listing(shared)
    first = load_dataset("cifar10")
    assert first.copy == "npz cifar10.npz"
    assert_well_formed(first, 50000, 10000, (3, 32, 32))
    assert first.y_train[:5].tolist() == [6, 9, 9, 4, 1]
    assert first.y_test[:5].tolist() == [3, 8, 8, 0, 6]
    assert torch.bincount(first.y_train).tolist() == [5000] * 10
    cached = list((cache / "tensors").glob("cifar10-npz-cifar10-npz-*.npz"))
    assert len(cached) == 1
    with np.load(cached[0]) as z:  # stored raw and uncompressed: uint8 NCHW
        assert z["x_train"].dtype == np.uint8 and z["x_train"].shape == (50000, 3, 32, 32)
        assert z["x_train"][0, :, 0, 0].tolist() == [59, 62, 63]  # first pixel per SOURCES.md

    real_load = np.load
    opened = []

    def spy(file, *args, **kwargs):
        opened.append(Path(file))
        return real_load(file, *args, **kwargs)

    monkeypatch.setattr(np, "load", spy)
    second = load_dataset("cifar10")
    assert opened == cached  # the 140 MB LZMA archive was not decompressed again
    assert second.copy == first.copy
    for key in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(second, key), getattr(first, key))
    assert listing(shared) == before

