"""CIFAR-10 ↔ STL-10 on their 9 shared classes (``cifar10-stl10``, ``stl10-cifar10``).

The protocol of French et al. 2018 (self-ensembling, ICLR) and Shu et al. 2018 (DIRT-T, ICLR):
CIFAR-10 "frog" and STL-10 "monkey" have no counterpart and are dropped; CIFAR "automobile"
is STL "car". Both datasets are mapped by class *name* onto one class list, ``SHARED_CLASSES``,
so label ``i`` means the same thing on both sides. STL-10's 96x96 images are resized to 32x32
(bilinear with antialiasing) to match CIFAR. The source train split is labelled (10% stratified,
seed 0, held out as source validation); the target train split (STL: the 5,000 labelled
"train" images minus monkey = 4,500, used unlabelled; STL's 100k "unlabeled" split is not used)
is the adaptation set and the target **test** split (STL 7,200 / CIFAR 9,000) is evaluated.

Files under one data root (``DABENCH_DOWNLOAD=1`` lets torchvision download them):
``<root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`` (read through torchvision) and
``<root>/stl10_binary/{train_X.bin,train_y.bin,test_X.bin,test_y.bin}`` (read directly: the unused
``unlabeled_X.bin`` need not be there, see :func:`read_stl_binary`). The decoded, filtered,
resized tensors are cached under ``<root>/cache/``.
"""

from __future__ import annotations

import pathlib

import numpy as np
import torch

from dabench.core.domain import DataFileError, Domain, DomainPair, MissingDataError, PairData, Schedule
from dabench.core.registry import register_pair
from dabench.core.splits import stratified_split

from .cache import cached, download_requested
from .digits import resize_uint8

# Canonical class orders of the two datasets (their label indices), and the shared 9-class list.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
STL10_CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")
SHARED_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "horse", "ship", "truck")
_STL_TO_SHARED_NAME = {"car": "automobile"}
SIZE = 32

_FILES = {
    "cifar10": [
        "cifar-10-batches-py/" + f for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    ],
    "stl10": ["stl10_binary/" + f for f in ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin")],
}


def label_map(dataset: str) -> torch.Tensor:
    """Original label → shared label (``-1`` for the dropped class) for ``cifar10`` or ``stl10``."""
    names = CIFAR10_CLASSES if dataset == "cifar10" else STL10_CLASSES
    return torch.tensor(
        [
            SHARED_CLASSES.index(_STL_TO_SHARED_NAME.get(n, n))
            if _STL_TO_SHARED_NAME.get(n, n) in SHARED_CLASSES
            else -1
            for n in names
        ],
        dtype=torch.int64,
    )


def to_shared(images: torch.Tensor, labels: torch.Tensor, dataset: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the class without a counterpart and relabel onto ``SHARED_CLASSES``."""
    mapped = label_map(dataset)[labels]
    keep = mapped >= 0
    return images[keep], mapped[keep]


def _missing(dataset: str, root: pathlib.Path) -> MissingDataError:
    files = "\n".join(f"    {root / f}" for f in _FILES[dataset])
    label = {"cifar10": "CIFAR-10 (python version)", "stl10": "STL-10 (binary version)"}[dataset]
    return MissingDataError(
        # the first line is what reports and dabench status show: it carries the fix too
        f"{label} not found under the data root {root} (DABENCH_DOWNLOAD=1 downloads it; "
        "the full error lists the files expected). "
        f"Expected torchvision's layout:\n{files}\n"
        f"To get it: run with DABENCH_DOWNLOAD=1 (torchvision downloads into {root}), or unpack the "
        f"official archive there, or point --data-root / $DABENCH_DATA at a folder that has it."
    )


STL_SIDE = 96


def read_stl_binary(root: pathlib.Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """STL-10's ``stl10_binary/{split}_X.bin`` and ``{split}_y.bin``: uint8 ``[N, 3, 96, 96]``
    (stored column-major, so each plane is transposed back) and 0-based labels (stored 1..10).

    Read directly rather than through ``torchvision.datasets.STL10``, whose integrity check
    requires (and md5-hashes) the 2.6 GB ``unlabeled_X.bin`` for every split although the
    benchmark never uses it: with the four files this loader names, torchvision refused and the
    error said the dataset was missing while listing files that were all there."""
    folder = pathlib.Path(root) / "stl10_binary"
    x_path, y_path = folder / f"{split}_X.bin", folder / f"{split}_y.bin"
    raw = np.fromfile(x_path, dtype=np.uint8)
    labels = np.fromfile(y_path, dtype=np.uint8).astype(np.int64) - 1
    per_image = 3 * STL_SIDE * STL_SIDE
    if raw.size % per_image or raw.size // per_image != labels.size:
        raise DataFileError(
            f"STL-10 files do not match: {x_path} holds {raw.size} bytes ({raw.size / per_image:g} images of "
            f"3x{STL_SIDE}x{STL_SIDE}) but {y_path} holds {labels.size} labels; re-extract the official archive"
        )
    if labels.size and not (0 <= labels.min() and labels.max() < len(STL10_CLASSES)):
        raise DataFileError(
            f"{y_path}: labels must be 1..{len(STL10_CLASSES)}, got {labels.min() + 1}..{labels.max() + 1}"
        )
    images = raw.reshape(-1, 3, STL_SIDE, STL_SIDE).transpose(0, 1, 3, 2)
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels)


def _refuse_corrupt_cifar(root: pathlib.Path) -> None:
    """Name the CIFAR-10 files that fail torchvision's MD5 check, if any.

    :func:`load_split` has checked that every file is there, so torchvision's "Dataset not found or
    corrupted" means a damaged file (a truncated copy, a CIFAR-100 or re-pickled batch); the
    message said the dataset was not found while listing files that all existed."""
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import check_integrity

    folder = root / tvd.CIFAR10.base_folder
    expected = [
        *tvd.CIFAR10.train_list,
        *tvd.CIFAR10.test_list,
        [tvd.CIFAR10.meta["filename"], tvd.CIFAR10.meta["md5"]],
    ]
    bad = [(folder / name, md5) for name, md5 in expected if not check_integrity(str(folder / name), md5)]
    if bad:
        named = ", ".join(f"{p} (MD5 expected {md5})" for p, md5 in bad)
        raise DataFileError(
            f"CIFAR-10 (python version): {len(bad)} file(s) under {folder} fail torchvision's MD5 check: {named}. "
            "They are damaged or not the official cifar-10-python.tar.gz files: re-extract that archive, "
            f"or delete {folder} and run with DABENCH_DOWNLOAD=1."
        )


def _decode(dataset: str, root: pathlib.Path, split: str) -> dict[str, torch.Tensor]:
    import torchvision.datasets as tvd

    try:
        if dataset == "cifar10":
            ds = tvd.CIFAR10(str(root), train=(split == "train"), download=False)
            images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
            labels = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
        else:
            images, labels = read_stl_binary(root, split)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
        if dataset == "cifar10":
            _refuse_corrupt_cifar(root)
        raise _missing(dataset, root) from exc
    images, labels = to_shared(images, labels, dataset)
    return {"images": resize_uint8(images, SIZE), "labels": labels}


def load_split(dataset: str, root: pathlib.Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images uint8 [N,3,32,32], shared labels)`` of ``dataset`` ∈ {cifar10, stl10}, split ∈ {train, test}."""
    root = pathlib.Path(root)
    files = [root / f for f in _FILES[dataset]]
    if download_requested():
        import torchvision.datasets as tvd

        for s in ("train", "test"):
            if dataset == "cifar10":
                tvd.CIFAR10(str(root), train=(s == "train"), download=True)
            else:
                tvd.STL10(str(root), split=s, download=True)
    if not all(f.is_file() for f in files):
        raise _missing(dataset, root)
    t = cached(root, dataset, f"{split}-9class", SIZE, files, lambda: _decode(dataset, root, split), base=root)
    return t["images"], t["labels"]


def _pair_data(source: str, target: str, root: pathlib.Path) -> PairData:
    sx, sy = load_split(source, root, "train")
    tx_train, ty_train = load_split(target, root, "train")
    tx_test, ty_test = load_split(target, root, "test")
    src = Domain(f"{source}-train", sx, sy, SHARED_CLASSES)
    tgt = Domain(target, torch.cat([tx_train, tx_test]), torch.cat([ty_train, ty_test]), SHARED_CLASSES)
    s_train, s_val = stratified_split(sy, 0.1, seed=0)
    n = len(ty_train)
    return PairData(src, tgt, s_train, s_val, torch.arange(n), torch.arange(n, len(tgt)))


def load_cifar_stl(root: pathlib.Path) -> PairData:
    return _pair_data("cifar10", "stl10", root)


def load_stl_cifar(root: pathlib.Path) -> PairData:
    return _pair_data("stl10", "cifar10", root)


# Defaults. Backbone: the 32-px conv net of DIRT-T (Shu et al. 2018, App. B, "small"), trained
# from scratch. Augmentation: random translation + horizontal flip, as French et al. 2018 (§4.1)
# used for CIFAR/STL. Those papers train with Adam (lr 1e-3, batch 64/128) for 40k–80k
# iterations; the engine uses one SGD recipe for all methods (momentum 0.9, lr 0.01, inv decay,
# wd 5e-4), with batch 128 per domain and 20k steps as a GPU-sized default (--set steps=... to
# change). Few-shot: 10 target labels per class.
_SCHEDULE = Schedule(
    steps=20000, batch_size=128, lr=0.01, momentum=0.9, weight_decay=5e-4, eval_every=2000, log_every=100
)

# Both train splits are class-balanced: STL-10 train 500 per class, CIFAR-10 train 5,000 per class.
for _name, _load, _desc, _max_shots in (
    (
        "cifar10-stl10",
        load_cifar_stl,
        "CIFAR-10 train → STL-10 train (unlabelled), 9 shared classes; evaluate on STL-10 test",
        500,
    ),
    (
        "stl10-cifar10",
        load_stl_cifar,
        "STL-10 train → CIFAR-10 train (unlabelled), 9 shared classes; evaluate on CIFAR-10 test",
        5000,
    ),
):
    register_pair(
        DomainPair(
            name=_name,
            description=_desc,
            load=_load,
            num_classes=len(SHARED_CLASSES),
            backbone="cnn32",
            channels=3,
            image_size=SIZE,
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            augment="crop_flip",
            schedule=_SCHEDULE,
            target_shots=10,
            max_target_shots=_max_shots,
            protocol_note="9 shared classes (no CIFAR frog, no STL monkey; automobile=car); STL 96px resized to 32px; "
            "source val = 10% of source train (seed 0); adapt on target train, evaluate on target test",
        )
    )
