"""Office-31 (Saenko et al. 2010, ECCV): Amazon (A, 2,817), DSLR (D, 498), Webcam (W, 795); 31 classes.

Six pairs ``office31-A-W``, ``-D-W``, ``-W-D``, ``-A-D``, ``-D-A``, ``-W-A`` and the group ``office31``.
Standard transductive protocol (DANN, Ganin et al. 2016; CDAN, Long et al. 2018): the whole
source domain is labelled (a fixed 10% stratified slice, seed 0, is held out as source
validation), the whole target domain is the unlabelled adaptation set **and** the evaluation set.

Folder layout (the one the original archive unpacks to), under the data root::

    <root>/office31/amazon/images/<class>/*.jpg
    <root>/office31/dslr/images/<class>/*.jpg
    <root>/office31/webcam/images/<class>/*.jpg

with the 31 class folders of ``OFFICE31_CLASSES``. JPEGs are decoded with torchvision
(``read_file`` + ``decode_image``, RGB), resized so the shorter side is 256 and centre-cropped to
256x256 at decode time; the engine's ``resized_crop_flip`` augmentation then takes 224-px crops
(evaluation: the 87.5% centre crop → 224). The decoded domain is cached under ``<root>/cache/``,
keyed by the size and mtime of every JPEG (see :mod:`dabench.datasets.cache`).
"""

from __future__ import annotations

import pathlib
import warnings

import torch
import torch.nn.functional as F

from dabench.core.domain import Domain, DomainPair, MissingDataError, PairData, Schedule
from dabench.core.registry import PAIRS, register_pair
from dabench.core.splits import stratified_split

from .cache import cached

DOMAINS = {"A": "amazon", "D": "dslr", "W": "webcam"}
OFFICE31_CLASSES = (
    "back_pack",
    "bike",
    "bike_helmet",
    "bookcase",
    "bottle",
    "calculator",
    "desk_chair",
    "desk_lamp",
    "desktop_computer",
    "file_cabinet",
    "headphones",
    "keyboard",
    "laptop_computer",
    "letter_tray",
    "mobile_phone",
    "monitor",
    "mouse",
    "mug",
    "paper_notebook",
    "pen",
    "phone",
    "printer",
    "projector",
    "punchers",
    "ring_binder",
    "ruler",
    "scissors",
    "speaker",
    "stapler",
    "tape_dispenser",
    "trash_can",
)
STORE_SIZE = 256  # stored side; the engine crops 224 from it
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
HOW_TO_GET = (
    "Office-31 cannot be downloaded automatically. Get the archive from the authors' page "
    "(Saenko et al. 2010, 'Adapting Visual Category Models to New Domains'; widely mirrored as "
    "office31.tar.gz / domain_adaptation_images.tar.gz) and unpack it so that the folders above exist, "
    "or point --data-root / $DABENCH_DATA at a folder that holds office31/."
)


def _layout(root: pathlib.Path) -> str:
    return "\n".join(f"    {root / 'office31' / d / 'images'}/<class>/*.jpg" for d in DOMAINS.values())


def domain_files(root: pathlib.Path, domain: str) -> tuple[list[pathlib.Path], torch.Tensor]:
    """The image files of ``domain`` (amazon/dslr/webcam) sorted by class then name, and their labels."""
    folder = pathlib.Path(root) / "office31" / domain / "images"
    if not folder.is_dir():
        raise MissingDataError(
            f"Office-31 domain {domain!r} not found: no folder {folder}.\nExpected layout:\n{_layout(root)}\n"
            f"with the 31 class folders ({', '.join(OFFICE31_CLASSES)}).\n{HOW_TO_GET}"
        )
    # hidden entries (.DS_Store, macOS's ._x.jpg AppleDouble files, .ipynb_checkpoints) are no classes or images
    present = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    missing = [c for c in OFFICE31_CLASSES if c not in present]
    extra = [c for c in present if c not in OFFICE31_CLASSES]
    if missing or extra:
        raise MissingDataError(
            f"Office-31 domain folder {folder} does not hold the 31 Office-31 classes: "
            f"missing {missing or 'none'}, unexpected {extra or 'none'}.\nExpected layout:\n{_layout(root)}\n{HOW_TO_GET}"
        )
    files, labels = [], []
    for i, c in enumerate(OFFICE31_CLASSES):
        found = sorted(
            p for p in (folder / c).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
        )
        files += found
        labels += [i] * len(found)
    if not files:
        raise MissingDataError(f"Office-31 domain folder {folder} has class folders but no images.\n{HOW_TO_GET}")
    return files, torch.tensor(labels, dtype=torch.int64)


def decode_resize(path: pathlib.Path, size: int = STORE_SIZE) -> torch.Tensor:
    """Decode one image to RGB uint8, resize its shorter side to ``size`` (antialiased), centre-crop ``size``."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    img = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    _, h, w = img.shape
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(img[None].float(), size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[0, :, top : top + size, left : left + size].round().clamp(0, 255).to(torch.uint8)


def decode_files(files: list[pathlib.Path], size: int = STORE_SIZE) -> torch.Tensor:
    """All ``files`` decoded into one uint8 ``[N, 3, size, size]`` tensor."""
    out = torch.empty(len(files), 3, size, size, dtype=torch.uint8)
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates torchvision.io decoding in favour of TorchCodec; it still works,
        # and one warning per image would drown the log.
        warnings.simplefilter("ignore", DeprecationWarning)
        for i, f in enumerate(files):
            try:
                out[i] = decode_resize(f, size)
            except RuntimeError as exc:  # torchvision's message names no file
                # an error, not a skip: Office-31's numbers are comparable only on all of its images
                raise RuntimeError(
                    f"Office-31: cannot decode {f} ({str(exc).splitlines()[-1][:120]}); "
                    "re-extract that file from the archive"
                ) from None
    return out


def load_domain(root: pathlib.Path, domain: str) -> Domain:
    """One Office-31 domain, from the decoded cache when its JPEGs are unchanged."""
    root = pathlib.Path(root)
    files, labels = domain_files(root, domain)
    base = root / "office31" / domain / "images"
    t = cached(
        root,
        f"office31-{domain}",
        "all",
        STORE_SIZE,
        files,
        lambda: {"images": decode_files(files), "labels": labels},
        base=base,
    )
    return Domain(domain, t["images"], t["labels"], OFFICE31_CLASSES)


def make_loader(source: str, target: str):
    def load(root: pathlib.Path) -> PairData:
        src, tgt = load_domain(root, DOMAINS[source]), load_domain(root, DOMAINS[target])
        s_train, s_val = stratified_split(src.labels, 0.1, seed=0)
        everything = torch.arange(len(tgt))
        return PairData(src, tgt, s_train, s_val, everything, everything)

    return load


# Defaults (ResNet-50 from ImageNet; new layers at lr 0.01, the pretrained backbone at 0.001 via
# the engine's 0.1 multiplier; SGD momentum 0.9, Nesterov; the (1+10p)^-0.75 annealing):
# as in CDAN (Long et al. 2018, §5 "Setup") and DANN (Ganin et al. 2016, §5.2.2), and the
# Transfer-Learning-Library Office-31 examples (batch 32 per domain, weight decay 1e-3,
# 20 epochs x 1,000 iterations; we default to half of that: 10,000 steps). Bottleneck 256
# (the methods' base default) matches CDAN/tllib. Few-shot: 3 target labels per class, the
# Office-31 budget of CCSA (Motiian et al. 2017, ICCV) and FADA (Motiian et al. 2017, NeurIPS).
_SCHEDULE = Schedule(
    steps=10000, batch_size=32, lr=0.01, momentum=0.9, weight_decay=1e-3, eval_every=1000, log_every=100
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PAIR_NAMES = []

for _s, _t in (("A", "W"), ("D", "W"), ("W", "D"), ("A", "D"), ("D", "A"), ("W", "A")):
    _name = f"office31-{_s}-{_t}"
    PAIR_NAMES.append(_name)
    register_pair(
        DomainPair(
            name=_name,
            description=f"Office-31 {DOMAINS[_s]} → {DOMAINS[_t]} (31 classes; transductive: adapt and evaluate on all of {DOMAINS[_t]})",
            load=make_loader(_s, _t),
            num_classes=len(OFFICE31_CLASSES),
            backbone="resnet50",
            channels=3,
            image_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            augment="resized_crop_flip",
            schedule=_SCHEDULE,
            target_shots=3,
            # max_target_shots left unknown: the per-class counts of the unpacked archive are not pinned
            # here, so a too-large target_shots is refused when the domain is loaded (check_target_shots)
            protocol_note="standard transductive protocol: the whole target domain is both the unlabelled "
            "adaptation set and the evaluation set; images stored at 256x256, 224 crops; "
            "source val = 10% of the source domain (seed 0)",
        )
    )

PAIRS.register_group("office31", PAIR_NAMES)
