"""MNIST ↔ USPS: the classic digit pairs (``mnist-usps``, ``usps-mnist``) on the full standard splits.

MNIST (LeCun et al. 1998): 60,000 train / 10,000 test, 28x28. USPS (Hull 1994): 7,291 train /
2,007 test, 16x16, resized to 28x28 (bilinear) as in ADDA (Tzeng et al. 2017) and CDAN
(Long et al. 2018) so one LeNet serves both directions.

Protocol (docs/architecture.md, "Protocols"): the source's train split is labelled (a fixed 10%
stratified slice, seed 0, is held out as source validation); the target's train split is the
unlabelled adaptation set; the target's **test** split is the evaluation set.

Where the files are read from, in order, under one data root:
1. ``<root>/mnist.npz`` / ``<root>/usps.npz`` — numpy archives with keys ``x_train, y_train,
   x_test, y_test`` (images uint8 ``[N, H, W]`` or ``[N, 1, H, W]``, labels integer digits 0..9;
   anything else is a :class:`~dabench.core.domain.DataFileError` naming the file and key). This layout exists for machines
   that can receive only a few plain files (``examples/gpu_data.sh`` copies them into ``.devdata/``).
2. torchvision's own layout, read with ``torchvision.datasets.MNIST`` / ``USPS``:
   ``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` and ``<root>/usps.bz2``,
   ``<root>/usps.t.bz2``. ``DABENCH_DOWNLOAD=1`` lets torchvision download them there.
Decoded torchvision data (USPS is parsed from LIBSVM text, which is slow) is cached under
``<root>/cache/`` (see :mod:`dabench.datasets.cache`).
"""

from __future__ import annotations

import pathlib

import numpy as np
import torch
import torch.nn.functional as F

from dabench.core.domain import DataFileError, Domain, DomainPair, MissingDataError, PairData, Schedule
from dabench.core.registry import register_pair
from dabench.core.splits import stratified_split

from .cache import cached, download_requested

DIGITS = tuple(str(i) for i in range(10))
SIZE = 28

_TORCHVISION_FILES = {
    "mnist": [
        f"MNIST/raw/{p}"
        for p in (
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        )
    ],
    "usps": ["usps.bz2", "usps.t.bz2"],
}


def _missing(name: str, root: pathlib.Path) -> MissingDataError:
    tv = "\n".join(f"    {root / f}" for f in _TORCHVISION_FILES[name])
    return MissingDataError(
        # the first line is what reports and dabench status show: it carries the fix too
        f"{name.upper()} not found under the data root {root} (DABENCH_DOWNLOAD=1 downloads it; "
        "the full error lists the files expected).\n"
        f"Looked for (1) {root / (name + '.npz')} (numpy archive with keys x_train, y_train, x_test, y_test)\n"
        f"and (2) torchvision's layout:\n{tv}\n"
        f"To get it: run with DABENCH_DOWNLOAD=1 (torchvision downloads into {root}), or copy the files "
        f"there, or point --data-root / $DABENCH_DATA at a folder that has them."
    )


def _to_nchw(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.uint8)
    return t.unsqueeze(1) if t.ndim == 3 else t


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of uint8 ``[N, C, H, W]`` to ``size x size``, back to uint8 (in chunks, to bound memory)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = []
    for chunk in images.split(4096):
        x = F.interpolate(chunk.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out.append(x.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)


NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _npz_fix(path: pathlib.Path) -> str:
    return (
        f"Rewrite it with numpy.savez({path.name!r}, x_train=..., y_train=..., x_test=..., y_test=...) "
        "(images uint8 [N, H, W] in 0..255, labels integer digits 0..9, one per image), "
        f"or remove it to read torchvision's layout under {path.parent} instead."
    )


def _npz_images(path: pathlib.Path, key: str, x: np.ndarray) -> torch.Tensor:
    """``x`` as uint8 ``[N, 1, H, W]``, or a :class:`DataFileError` naming the file, key and fix.

    Why so strict: a float archive in [0, 1] was cast to uint8 as it was (every pixel 0 or 1: the
    runs trained on black images and completed), and a channels-last ``[N, H, W, 1]`` one became
    ``H`` channels of ``W x 1`` pixels, resized without complaint."""
    where = f"{path}: {key!r} holds {x.dtype} {x.shape}"
    if x.ndim == 4 and x.shape[1] != 1 and x.shape[-1] == 1:
        raise DataFileError(f"{where}, channels last; expected [N, H, W] (use x[..., 0]). {_npz_fix(path)}")
    if not (x.ndim == 3 or (x.ndim == 4 and x.shape[1] == 1)) or 0 in x.shape:
        hint = " (flat rows: reshape to [N, H, W])" if x.ndim == 2 else ""
        raise DataFileError(f"{where}; expected grey images [N, H, W] or [N, 1, H, W]{hint}. {_npz_fix(path)}")
    if x.dtype != np.uint8:
        lo, hi = (x.min(), x.max()) if x.size else (0, 0)
        if not (np.issubdtype(x.dtype, np.integer) and 0 <= lo and hi <= 255):  # other integers: lossless
            scale = " (values in [0, 1]: (x * 255).round().astype(numpy.uint8))" if hi <= 1 else ""
            raise DataFileError(
                f"{where} with values in [{lo}, {hi}]; expected uint8 pixels 0..255{scale}. {_npz_fix(path)}"
            )
    return _to_nchw(x.astype(np.uint8, copy=False))


def _npz_labels(path: pathlib.Path, key: str, y: np.ndarray, n: int) -> torch.Tensor:
    """``y`` as int64 ``[n]`` digits 0..9, or a :class:`DataFileError` naming the file, key and fix."""
    where = f"{path}: {key!r} holds {y.dtype} {y.shape}"
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise DataFileError(f"{where}; expected {n} integer labels (one per image), shape ({n},). {_npz_fix(path)}")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= len(DIGITS):
        shift = " (1-based: subtract 1)" if (lo, hi) == (1, len(DIGITS)) else ""
        raise DataFileError(f"{where} with labels in [{lo}, {hi}]; expected digits 0..9{shift}. {_npz_fix(path)}")
    return torch.as_tensor(y.astype(np.int64))


def _from_npz(path: pathlib.Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The train and test splits of a ``.npz`` archive, every key checked (one error naming the file,
    the key, what it holds, what is expected and the fix, instead of a torch error deep in a run)."""
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - zipfile, pickle and OS errors alike: not a readable archive
        raise DataFileError(f"{path} is not a readable numpy .npz archive ({exc}). {_npz_fix(path)}") from None
    if not isinstance(z, np.lib.npyio.NpzFile):  # a bare .npy array saved under the .npz name
        raise DataFileError(f"{path} holds one array, not a .npz archive of {', '.join(NPZ_KEYS)}. {_npz_fix(path)}")
    with z:
        missing = [k for k in NPZ_KEYS if k not in z.files]
        if missing:
            raise DataFileError(
                f"{path} has no key(s) {', '.join(missing)} (it holds {', '.join(z.files) or 'nothing'}); "
                f"expected {', '.join(NPZ_KEYS)}. {_npz_fix(path)}"
            )
        out = {}
        for split in ("train", "test"):
            try:
                x, y = z[f"x_{split}"], z[f"y_{split}"]
            except Exception as exc:  # noqa: BLE001 - a damaged member (zlib, CRC, pickled object)
                raise DataFileError(f"{path}: cannot read the {split} arrays ({exc}). {_npz_fix(path)}") from None
            images = _npz_images(path, f"x_{split}", x)
            out[split] = (images, _npz_labels(path, f"y_{split}", y, len(images)))
    return out


def _from_torchvision(name: str, root: pathlib.Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    import torchvision.datasets as tvd

    download = download_requested()
    files = [root / f for f in _TORCHVISION_FILES[name]]
    if not download and not all(f.is_file() for f in files):
        raise _missing(name, root)
    if download:  # let torchvision fetch what is missing before we fingerprint the files
        for train in (True, False):
            (tvd.MNIST if name == "mnist" else tvd.USPS)(str(root), train=train, download=True)
    out = {}
    for split, train in (("train", True), ("test", False)):
        split_files = [f for f in files if ("t10k" in f.name or ".t." in f.name) != train]

        def decode(train: bool = train) -> dict[str, torch.Tensor]:
            try:
                ds = (tvd.MNIST if name == "mnist" else tvd.USPS)(str(root), train=train, download=False)
            except RuntimeError as exc:  # torchvision's "Dataset not found or corrupted"
                raise _missing(name, root) from exc
            return {"images": _to_nchw(ds.data), "labels": torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)}

        t = cached(root, name, split, "native", split_files, decode, base=root)
        out[split] = (t["images"], t["labels"])
    return out


def load_digits(name: str, root: pathlib.Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{"train": (images, labels), "test": (...)}`` of ``mnist`` or ``usps``, images uint8 1x28x28."""
    root = pathlib.Path(root)
    npz = root / f"{name}.npz"
    splits = _from_npz(npz) if npz.is_file() else _from_torchvision(name, root)
    return {k: (resize_uint8(x, SIZE), y) for k, (x, y) in splits.items()}


def _pair_data(source: str, target: str, root: pathlib.Path) -> PairData:
    s = load_digits(source, root)
    t = load_digits(target, root)
    src = Domain(f"{source}-train", s["train"][0], s["train"][1], DIGITS)
    # One target domain holding train then test, so adaptation and evaluation index into it.
    tgt = Domain(
        f"{target}", torch.cat([t["train"][0], t["test"][0]]), torch.cat([t["train"][1], t["test"][1]]), DIGITS
    )
    n_adapt = len(t["train"][1])
    s_train, s_val = stratified_split(src.labels, 0.1, seed=0)
    return PairData(src, tgt, s_train, s_val, torch.arange(n_adapt), torch.arange(n_adapt, len(tgt)))


def load_mnist_usps(root: pathlib.Path) -> PairData:
    return _pair_data("mnist", "usps", root)


def load_usps_mnist(root: pathlib.Path) -> PairData:
    return _pair_data("usps", "mnist", root)


# Defaults. SGD (momentum 0.9, weight decay 5e-4, lr 0.01, the (1+10p)^-0.75 annealing) and
# batch 64 per domain follow CDAN's digit experiments (Long et al. 2018, NeurIPS, §5 "digits",
# LeNet from the Caffe MNIST example) and DANN's schedule (Ganin et al. 2016). 5,000 steps
# (~5 MNIST epochs) is far shorter than the papers' runs but converges source-only LeNet, and
# stays CPU-friendly (LeNet: a few minutes per run on one core); raise it with --set steps=...
# USPS→MNIST trains at lr 0.1, as TLlib's LeNet digit scripts do for that direction (its
# examples/domain_adaptation/image_classification/*.sh, "# Digits"): with the 7,291 USPS
# images as source, lr 0.01 under-trains in 5,000 steps (one seed on a CPU, target accuracy
# under the `last` rule: source-only 70.8 → 74.3, DAN 83.8 → 87.5, DANN 96.3 → 95.9; see
# results/reference/mnist-usps-usps-mnist-cpu.md). MNIST→USPS keeps lr 0.01, as TLlib does.
# No augmentation, as in ADDA/CDAN. DANN's discriminator uses 500 hidden units on digits as in
# ADDA (Tzeng et al. 2017, §4.1: "500-500-1"). Few-shot: 5 target labels per class, inside the
# 1–7 range of FADA (Motiian et al. 2017) on MNIST↔USPS.
_DIGIT_SCHEDULE = Schedule(steps=5000, batch_size=64, lr=0.01, momentum=0.9, weight_decay=5e-4, eval_every=1000)
_DIGIT_LR = {"mnist-usps": 0.01, "usps-mnist": 0.1}
_DIGIT_OVERRIDES = {"dann": {"disc_hidden": 500}}

# The adaptation split is the target's train split; its smallest class bounds target_shots:
# USPS train per class 1194, 1005, 731, 658, 652, 556, 664, 645, 542, 644 (digit 8: 542);
# MNIST train per class 5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949 (digit 5: 5,421).
for _name, _load, _desc, _max_shots in (
    (
        "mnist-usps",
        load_mnist_usps,
        "MNIST train 60k → USPS train 7,291 (unlabelled); evaluate on USPS test 2,007",
        542,
    ),
    (
        "usps-mnist",
        load_usps_mnist,
        "USPS train 7,291 → MNIST train 60k (unlabelled); evaluate on MNIST test 10,000",
        5421,
    ),
):
    register_pair(
        DomainPair(
            name=_name,
            description=_desc,
            load=_load,
            num_classes=10,
            backbone="lenet",
            channels=1,
            image_size=SIZE,
            mean=(0.5,),
            std=(0.5,),
            augment="none",
            schedule=_DIGIT_SCHEDULE.replace(lr=_DIGIT_LR[_name]),
            target_shots=5,
            max_target_shots=_max_shots,
            method_overrides=_DIGIT_OVERRIDES,
            protocol_note="full splits; USPS 16x16 resized to 28x28; source val = 10% of source train (seed 0); "
            "adapt on target train, evaluate on target test",
        )
    )
