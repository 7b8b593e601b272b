"""Data sets: where each one can be read from, loaded whole into memory.

A data set is loaded once into float32 tensors (N, C, H, W), normalized per
channel with the mean and standard deviation of its *training* split, computed
at load time (so there are no per-data-set constants to keep in sync); the test
split is normalized with the training statistics too. Labels are int64.

Where the files are
-------------------
The data root is ``--data-dir``, else ``TECLI_DATA_DIR``, else ``<cache>/data``
(see tecli.paths). Each data set lists the *copies* it can be read from, in
order; the first copy whose files are all present wins. The root is searched
first, then ``<cache>/downloads``.

1. torchvision's own files, in the layout torchvision expects under the root.
   MNIST and Fashion-MNIST are also read from their ``.gz`` files alone: those
   are extracted into ``<cache>/extracted``, never next to the originals.
2. The NumPy form, for any registered data set: ``<root>/<name>.npz`` with the
   arrays ``x_train``, ``y_train``, ``x_test``, ``y_test``. Images are uint8
   (0-255) or floats in [0, 1], shaped N x H x W (gray), N x H x W x C or
   N x C x H x W; labels are integers 0 .. n_classes-1. The zip may be stored,
   deflated or LZMA-compressed (np.load reads all three).
3. usps only: the HDF5 copy ``usps.h5`` (groups ``train`` and ``test``, each
   with ``data``, N x 256 in [0, 1], and ``target``). Its pixels are scaled
   differently from the LIBSVM files torchvision reads, which is why
   DataSplits.copy records the copy that was read.

When no copy is present, torchvision downloads its files into the root if that
folder exists and is writable, else into ``<cache>/downloads``. A folder whose
permission bits deny writing counts as read-only even for root, and nothing is
ever written into a root that already holds a copy.

Cache
-----
A decoded copy's arrays (N, C, H, W; uint8 where the source is uint8) are saved
uncompressed to ``<cache>/tensors/<name>-<copy>-<fingerprint>.npz``, where the
fingerprint hashes the source files' paths, sizes and mtimes, so a changed
source is decoded afresh. Decompressing cifar10.npz takes ~7-9 s; reading its
cache well under a second.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np

from tecli.errors import UserError, shown
from tecli.paths import cache_dir, data_root, writable_folder

if TYPE_CHECKING:  # torch is imported when data is loaded, so the registry stays light
    import torch

Arrays = dict[str, np.ndarray]
_KEYS = ("x_train", "y_train", "x_test", "y_test")
_TRAIN_TEST = ({"train": True}, {"train": False})  # torchvision constructor arguments, train then test
_SPLIT = ({"split": "train"}, {"split": "test"})
# torchvision's downloads open sockets without a timeout; an unreachable host must fail, not hang.
_DOWNLOAD_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class DataSplits:
    """A data set in memory: normalized float32 images (N, C, H, W) and int64 labels."""

    name: str
    copy: str  # which copy was read, e.g. "hdf5 usps.h5"; runs record it
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.x_train.shape[1:]
        return (c, h, w)


@dataclass(frozen=True)
class _Torchvision:
    """torchvision's own files, read through its dataset class with download=False."""

    label: str
    cls: str  # class name in torchvision.datasets
    files: tuple[str, ...]  # relative to the root
    splits: tuple[dict, dict]  # constructor arguments selecting train and test
    gz: bool = False  # files are MNIST's .gz, to be extracted into the cache first

    def read(self, folder: Path) -> Arrays:
        import torchvision.datasets

        cls = getattr(torchvision.datasets, self.cls)
        root = _extract_gz(folder, self.files) if self.gz else folder
        arrays = {}
        for part, kwargs in zip(("train", "test"), self.splits):
            ds = cls(root, download=False, **kwargs)
            # The underlying arrays, not __getitem__: no PIL image per sample.
            arrays[f"x_{part}"] = np.asarray(ds.data)
            arrays[f"y_{part}"] = np.asarray(ds.targets if hasattr(ds, "targets") else ds.labels)
        return arrays

    def download(self, folder: Path) -> None:
        import torchvision.datasets

        cls = getattr(torchvision.datasets, self.cls)
        for kwargs in self.splits:
            cls(folder, download=True, **kwargs)


@dataclass(frozen=True)
class _Npz:
    """The NumPy form ``<root>/<name>.npz`` (see the module docstring)."""

    name: str

    @property
    def label(self) -> str:
        return f"npz {self.name}.npz"

    @property
    def files(self) -> tuple[str, ...]:
        return (f"{self.name}.npz",)

    def read(self, folder: Path) -> Arrays:
        path = folder / self.files[0]
        with np.load(path) as z:
            missing = [k for k in _KEYS if k not in z.files]
            if missing:
                raise UserError(f"{shown(path)} lacks {', '.join(missing)}; the npz form needs {', '.join(_KEYS)}")
            return {k: z[k] for k in _KEYS}


class _UspsH5:
    """The widely shared HDF5 copy of USPS: one 16x16 image per row, values in [0, 1]."""

    label = "hdf5 usps.h5"
    files = ("usps.h5",)

    def read(self, folder: Path) -> Arrays:
        import h5py

        arrays = {}
        with h5py.File(folder / self.files[0], "r") as f:
            for part in ("train", "test"):
                x = f[part]["data"][()]
                if x.ndim == 2 and x.shape[1] == 16 * 16:
                    x = x.reshape(len(x), 16, 16)  # row-major; other widths fail the shape check
                arrays[f"x_{part}"] = x
                arrays[f"y_{part}"] = f[part]["target"][()]
        return arrays


class _SklearnDigits:
    """scikit-learn's bundled 8x8 digits with a fixed stratified 80/20 split."""

    label = "scikit-learn load_digits"
    files: tuple[str, ...] = ()

    def read(self, folder: Path) -> Arrays:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        x = (digits.images / 16.0).astype(np.float32)  # pixel values are 0..16
        x_train, x_test, y_train, y_test = train_test_split(
            x, digits.target, test_size=0.2, random_state=0, stratify=digits.target
        )
        return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


@dataclass(frozen=True)
class _Dataset:
    name: str
    shape: tuple[int, int, int]  # (C, H, W)
    copies: tuple  # tried in order; a torchvision copy, if any, comes first and is what gets downloaded
    n_classes: int = 10


def _mnist_copies(cls: str) -> tuple[_Torchvision, _Torchvision]:
    raw = tuple(
        f"{cls}/raw/{split}-{kind}"
        for split in ("train", "t10k")
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")
    )
    gz = tuple(f"{f}.gz" for f in raw)
    return (
        _Torchvision(f"torchvision {cls}/raw", cls, raw, _TRAIN_TEST),
        _Torchvision(f"torchvision {cls}/raw/*.gz", cls, gz, _TRAIN_TEST, gz=True),
    )


_CIFAR_FILES = tuple(
    f"cifar-10-batches-py/{f}"
    for f in (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
)
# STL10 checks unlabeled_X.bin as well, although tecli never reads the unlabeled split.
_STL10_FILES = tuple(
    f"stl10_binary/{f}" for f in ("train_X.bin", "train_y.bin", "unlabeled_X.bin", "test_X.bin", "test_y.bin")
)

_REGISTRY: dict[str, _Dataset] = {
    d.name: d
    for d in (
        _Dataset("digits", (1, 8, 8), (_SklearnDigits(),)),
        _Dataset(
            "usps",
            (1, 16, 16),
            (
                _Torchvision(
                    "torchvision usps.bz2+usps.t.bz2", "USPS", ("usps.bz2", "usps.t.bz2"), _TRAIN_TEST
                ),
                _Npz("usps"),
                _UspsH5(),
            ),
        ),
        _Dataset("mnist", (1, 28, 28), (*_mnist_copies("MNIST"), _Npz("mnist"))),
        _Dataset("fashionmnist", (1, 28, 28), (*_mnist_copies("FashionMNIST"), _Npz("fashionmnist"))),
        _Dataset(
            "cifar10",
            (3, 32, 32),
            (
                _Torchvision("torchvision cifar-10-batches-py", "CIFAR10", _CIFAR_FILES, _TRAIN_TEST),
                _Npz("cifar10"),
            ),
        ),
        _Dataset(
            "svhn",
            (3, 32, 32),
            (
                _Torchvision(
                    "torchvision train_32x32.mat+test_32x32.mat",
                    "SVHN",
                    ("train_32x32.mat", "test_32x32.mat"),
                    _SPLIT,
                ),
                _Npz("svhn"),
            ),
        ),
        _Dataset(
            "stl10",
            (3, 96, 96),
            (_Torchvision("torchvision stl10_binary", "STL10", _STL10_FILES, _SPLIT), _Npz("stl10")),
        ),
    )
}

DATASET_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def load_dataset(name: str, data_dir: str | os.PathLike | None = None) -> DataSplits:
    """Load `name` from the first copy found (downloading if none is), normalized, into memory."""
    spec = _REGISTRY.get(name)
    if spec is None:
        raise UserError(f"unknown dataset {shown(name)!r}; valid names: {', '.join(DATASET_NAMES)}")
    root = data_root(data_dir)
    folders = list(dict.fromkeys([root, cache_dir() / "downloads"]))
    found = _find(spec, folders)
    if found is None:
        failure = _download(spec, root if writable_folder(root) else cache_dir() / "downloads")
        found = _find(spec, folders)
        if found is None:
            expected = " or ".join(" + ".join(copy.files) for copy in spec.copies)
            raise UserError(
                f"dataset {spec.name!r} not found in {' or '.join(map(shown, folders))} "
                f"(expected {expected}) and the download failed ({failure}); "
                "put the files there, or pass --data-dir / set TECLI_DATA_DIR to the folder that holds them"
            )
    copy, folder = found
    try:
        arrays = _read_cached(spec, copy, folder)
    except UserError:
        raise
    except Exception as error:  # truncated or corrupt files fail in many ways (zip, HDF5, torchvision)
        raise UserError(
            f"cannot read {spec.name} from {copy.label} in {shown(folder)}: {type(error).__name__}: "
            f"{' '.join(str(error).split())}; the file may be corrupt, replace it"
        ) from None
    return _to_splits(spec, copy.label, arrays)


def _find(spec: _Dataset, folders: list[Path]):
    """(copy, folder) of the first copy whose files are all present, or None."""
    for folder in folders:
        for copy in spec.copies:
            if all((folder / f).is_file() for f in copy.files):
                return copy, folder
    return None


def _download(spec: _Dataset, target: Path) -> str:
    """Fetch torchvision's files for `spec` into `target`; the reason on failure, "" on success.

    torchvision downloads into a temporary folder inside `target` that is always removed,
    and only the finished files are moved into place, so a failed or interrupted
    download leaves nothing that the next call could mistake for data.
    """
    copy = spec.copies[0]  # digits, the one set without a torchvision copy, never needs a download
    target.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tecli-download-", dir=target))
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)
    try:
        copy.download(tmp)
        for rel in copy.files:
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / rel, target / rel)
    except Exception as exc:  # offline it is URLError, OSError or RuntimeError; a bad archive raises others
        return " ".join(str(exc).split()) or type(exc).__name__
    finally:
        socket.setdefaulttimeout(previous_timeout)
        shutil.rmtree(tmp, ignore_errors=True)
    return ""


def _read_cached(spec: _Dataset, copy, folder: Path) -> Arrays:
    """The copy's arrays in canonical form, from the tensor cache when it has them.

    A copy without files (scikit-learn's bundled digits) has nothing to fingerprint
    and loads in milliseconds, so it is not cached.
    """
    if not copy.files:
        return _canonical(spec, copy.read(folder), copy.label)
    slug = re.sub(r"[^a-z0-9]+", "-", copy.label.lower()).strip("-")
    path = cache_dir() / "tensors" / f"{spec.name}-{slug}-{_fingerprint(folder, copy.files)}.npz"
    if path.is_file():
        with np.load(path) as z:
            return {k: z[k] for k in _KEYS}
    arrays = _canonical(spec, copy.read(folder), ", ".join(str(folder / f) for f in copy.files))
    _atomic_write(path, lambda f: np.savez(f, **arrays))
    return arrays


def _fingerprint(folder: Path, files: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for rel in files:
        path = (folder / rel).resolve()
        st = path.stat()
        h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write through a temporary file in the same folder, then rename: readers see all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _extract_gz(folder: Path, files: tuple[str, ...]) -> Path:
    """Decompress .gz files into <cache>/extracted under the same relative paths; returns that root.

    torchvision's MNIST reads only extracted files and would extract them next to the
    originals, which must stay untouched. Called only when the tensor cache misses, so a
    changed .gz is always extracted afresh.
    """
    root = cache_dir() / "extracted"
    for rel in files:

        def write(out: IO[bytes], src: Path = folder / rel) -> None:
            with gzip.open(src, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)

        _atomic_write(root / rel.removesuffix(".gz"), write)
    return root


def _canonical(spec: _Dataset, arrays: Arrays, source: str) -> Arrays:
    """Images as C-contiguous (N, C, H, W), uint8 or float32; labels int64. Checks shapes and labels."""
    c, h, w = spec.shape
    out = {}
    for part in ("train", "test"):
        x, y = np.asarray(arrays[f"x_{part}"]), np.asarray(arrays[f"y_{part}"])
        if c == 1 and x.shape[1:] == (h, w):
            x = x[:, None]
        elif x.shape[1:] == (h, w, c):
            x = x.transpose(0, 3, 1, 2)
        if x.shape[1:] != spec.shape:
            raise UserError(
                f"{source}: {part} images have shape {x.shape[1:]}, but {spec.name} needs "
                f"(C, H, W) = {spec.shape} (or H x W x C)"
            )
        in_range = y.size == 0 or 0 <= y.min() <= y.max() < spec.n_classes
        if not (np.issubdtype(y.dtype, np.integer) and y.shape == (len(x),) and in_range):
            raise UserError(f"{source}: {part} labels must be {len(x)} integers in 0..{spec.n_classes - 1}")
        if x.dtype != np.uint8 and not (np.isfinite(x).all() and 0 <= x.min() and x.max() <= 1):
            raise UserError(f"{source}: {part} images must be uint8 or floats in [0, 1] (found values outside, or NaN)")
        out[f"x_{part}"] = np.ascontiguousarray(x if x.dtype == np.uint8 else x.astype(np.float32))
        out[f"y_{part}"] = y.astype(np.int64)
    return out


def _to_splits(spec: _Dataset, copy: str, arrays: Arrays) -> DataSplits:
    """Tensors normalized per channel with the training split's mean and (population) std."""
    import torch

    x_train = torch.from_numpy(arrays["x_train"]).to(torch.float32)
    x_test = torch.from_numpy(arrays["x_test"]).to(torch.float32)
    std, mean = torch.std_mean(x_train, dim=(0, 2, 3), keepdim=True, correction=0)
    if (std == 0).any():
        raise UserError(f"{copy}: a channel of the {spec.name} training images is constant; cannot normalize")
    for x in (x_train, x_test):
        x.sub_(mean).div_(std)
    return DataSplits(
        name=spec.name,
        copy=copy,
        x_train=x_train,
        y_train=torch.from_numpy(arrays["y_train"]),
        x_test=x_test,
        y_test=torch.from_numpy(arrays["y_test"]),
        n_classes=spec.n_classes,
    )
