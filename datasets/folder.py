"""Your own images as a pair: ``folder:[name=NAME,]source=DIR,target=DIR[,key=value...]``.

Each DIR has the ImageFolder layout ``<DIR>/<class>/**/*.jpg|jpeg|png|gif|webp|bmp|tif|tiff``
(sub-folders of a class folder count, as in torchvision's ImageFolder; files are ordered by their
path relative to the class folder, never by the filesystem's listing). Classes are matched **by
folder name**; the pair uses the classes both domains have (labels are their sorted order) and
skips the others, saying so in a :class:`FolderPairNote` warning (with empty class folders and
files that are not images, counted and named); no shared class is an error listing both class
sets, and names that differ only in case or spaces (``Cat``/``cat``) are an error naming them.
Hidden files and folders (``.DS_Store``, macOS's ``._x.jpg``) are ignored. A file that cannot be
decoded (corrupt, truncated) is left out, named with the count in a warning on every load.
16-bit images are scaled to 8 bits; palette images keep their colours.

Options (all but source and target optional)::

    name=NAME          the short name tables and figures show (letters, digits, . _ + -); default:
                       the two folder names, ``<source>-<target>``, with any other options given
    size=S             images are decoded with torchvision.io and resized (squashed) to S×S.
                       Default: detected, the larger of the two domains' median image side,
                       at least 28 px for grey (LeNet's input) and 32 px for RGB, at most 224
    channels=C         3 (RGB) or 1 (grey). Default: detected, 1 when every sampled image is grey
                       (one channel, or three equal ones, as grey JPEGs often are), else 3
    backbone=NAME      a registered backbone (default: lenet for 1 channel ≤ 64 px, cnn32 for RGB
                       ≤ 64 px, resnet50 above 64 px)
    eval=half          half: the target is split 50/50, stratified, into an unlabelled adaptation
                       half and an evaluation half (seed 0, the same for every run);
                       all: transductive (adapt on and evaluate on the whole target, as Office-31)
    augment=NAME       none | shift | crop_flip | resized_crop_flip (default: none up to 64 px,
                       resized_crop_flip above)
    shots=5            labelled target images per class for the few-shot methods (default 5, or what
                       the adaptation split's smallest class holds if fewer; more is an error)

Detection decodes a few images per class (the first 3 of each class folder, both domains) and
says what it found in one :class:`FolderPairNote` warning and in the pair's description
(``dabench list pairs`` after the pair was named, and the record's pair description).

Default schedule: 1,000 steps, batch 32 per domain, lr 0.01, evaluation every 250 steps
(override with ``--set steps=...`` etc.).

Normalisation: ImageNet mean/std for RGB (what pretrained backbones expect; harmless from
scratch), 0.5/0.5 for grey. Relative (and ``~``) paths are made absolute against the current
directory when the name is first used, and the run name, records and workers use that absolute
spelling. Spaces and ``=`` in a path are fine (quote the argument in the shell); a comma is not
(commas separate the options): the error says so, with a link as the fix.
Decoded domains are cached under ``<data_root>/cache/`` keyed by the files' sizes and mtimes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import statistics
import warnings

import torch
import torch.nn.functional as F

from dabench.core.domain import AUGMENTATIONS, Domain, DomainPair, MissingDataError, PairData, Schedule, shots_error

# the name grammar lives in core (torch-free) so that reading results can label folder pairs
from dabench.core.pairnames import NAME_CHARS, OPTIONS, USAGE, folder_label, parse_arguments  # noqa: F401
from dabench.core.registry import BACKBONES, PAIRS, RegistryError
from dabench.core.splits import stratified_split

from .cache import cached

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
#: images decoded per class folder to detect the channels and size
DETECT_PER_CLASS = 3
#: a 3-channel image whose channels differ by at most this (mean absolute uint8 levels) is grey
GREY_TOLERANCE = 1.0
MIN_SIZE = {1: 28, 3: 32}  # LeNet's and cnn32's native input sides
MAX_SIZE = 224


class FolderPairNote(UserWarning):
    """What a folder pair detected from its images (channels, size) and chose (backbone)."""


def detect_format(domains: list[dict[str, list[pathlib.Path]]]) -> tuple[int, int]:
    """``(channels, median side)`` from the first :data:`DETECT_PER_CLASS` images of each class.

    channels is 1 when every sampled image is grey: stored with one channel (two with alpha),
    or with three whose values agree within :data:`GREY_TOLERANCE` levels on average (grey
    images saved as RGB JPEG). The side is the larger of the domains' median ``max(h, w)``.
    """
    grey, sides = True, []
    for found in domains:
        domain_sides = []
        for files in found.values():
            decoded = 0
            for f in files:
                if decoded == DETECT_PER_CLASS:
                    break
                try:
                    # RGB, not UNCHANGED: a palette PNG read unchanged is its palette indices
                    # (one channel), which would pass a colour image off as grey
                    img = read_image(f, channels=3)
                except UndecodableImage:
                    continue  # named (with the others) when the domain is decoded
                decoded += 1
                domain_sides.append(max(img.shape[-2:]))
                if grey:
                    rgb = img.float()
                    spread = max(float((rgb[0] - rgb[1]).abs().mean()), float((rgb[1] - rgb[2]).abs().mean()))
                    grey = spread <= GREY_TOLERANCE
        if not domain_sides:
            first = next(iter(found.values()))[0]
            raise MissingDataError(f"folder pair: no image under {first.parent.parent} could be decoded")
        sides.append(int(statistics.median_low(domain_sides)))
    return (1 if grey else 3), max(sides)


class UndecodableImage(RuntimeError):
    """An image file neither torchvision nor Pillow can decode (corrupt, truncated, not an image)."""


def read_image(f: pathlib.Path, channels: int) -> torch.Tensor:
    """One image as uint8 ``[channels, H, W]``.

    torchvision decodes JPEG/PNG/GIF/WebP; what it refuses (BMP, TIFF) goes through Pillow.
    16-bit PNGs (torchvision gives uint16 values up to 65535) are scaled to 8 bits: stored into a
    uint8 tensor as they are, they wrapped round modulo 256 into noise.
    """
    from torchvision.io import ImageReadMode, decode_image, read_file

    try:
        with warnings.catch_warnings():  # torchvision ≥ 0.29 warns on every call that torchcodec exists
            warnings.simplefilter("ignore", DeprecationWarning)
            img = decode_image(read_file(str(f)), mode=ImageReadMode.RGB if channels == 3 else ImageReadMode.GRAY)
    except RuntimeError as tv_error:
        try:
            img = _pil_read(f, channels)
        except Exception as exc:  # noqa: BLE001 - any Pillow failure means: not a readable image
            raise UndecodableImage(f"{f}: {str(tv_error).splitlines()[-1][:120]}; Pillow: {exc}") from None
    if img.dtype == torch.uint16:
        img = (img.to(torch.int32) * 255 + 32767).div(65535, rounding_mode="floor").to(torch.uint8)
    return img


def _pil_read(f: pathlib.Path, channels: int) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    with Image.open(f) as opened:
        opened.load()
        im: Image.Image = opened
        if im.mode.startswith("I"):  # 16-bit (or 32-bit integer) grey, as 16 bits: to 8 before any mode change
            wide = np.asarray(im, dtype=np.float64)
            im = Image.fromarray(np.clip(wide / 65535 * 255 + 0.5, 0, 255).astype(np.uint8))
        arr = np.asarray(im.convert("RGB" if channels == 3 else "L"))
    t = torch.from_numpy(arr.copy())
    return t.permute(2, 0, 1).contiguous() if t.ndim == 3 else t[None]


@dataclasses.dataclass
class Listing:
    """What :func:`scan` found under one domain folder."""

    classes: dict[str, list[pathlib.Path]]  # class name → its image files, sorted by relative path
    empty: list[str]  # class folders without an image file
    ignored: list[pathlib.Path]  # files that are not images by their suffix (hidden files not counted)


def _is_hidden(name: str) -> bool:
    # .DS_Store, and macOS's AppleDouble "._photo.jpg" files (resource forks copied onto non-Mac
    # disks): the latter carry an image suffix but are not images, and stopped every load
    return name.startswith(".")


def _image_files(folder: pathlib.Path, ignored: list[pathlib.Path]) -> list[pathlib.Path]:
    """The image files anywhere below ``folder`` (sub-folders too, as torchvision's ImageFolder;
    symlinks followed, each real folder once), sorted by their path relative to ``folder`` so that
    the order, hence the labels and the target split, never depends on the filesystem's listing."""
    out: list[pathlib.Path] = []
    seen: set[str] = set()
    for here, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(here)
        if real in seen:  # a symlink loop, or a folder linked twice
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not _is_hidden(d)]
        for n in names:
            if _is_hidden(n):
                continue
            f = pathlib.Path(here) / n
            (out if f.suffix.lower() in IMAGE_SUFFIXES else ignored).append(f)
    return sorted(out, key=lambda f: f.relative_to(folder).as_posix())


def scan(root: pathlib.Path) -> Listing:
    """The class folders of ``root``; no class folder with images is an error naming ``root``."""
    if not root.is_dir():
        raise MissingDataError(f"folder pair: no such folder {root} (expected {root}/<class>/*.jpg|png)")
    classes: dict[str, list[pathlib.Path]] = {}
    empty: list[str] = []
    ignored: list[pathlib.Path] = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not _is_hidden(p.name)):
        files = _image_files(d, ignored)
        if files:
            classes[d.name] = files
        else:
            empty.append(d.name)
    if not classes:
        raise MissingDataError(
            f"folder pair: {root} has no class folders with images (expected {root}/<class>/*.jpg|png)"
        )
    return Listing(classes, empty, ignored)


def class_folders(root: pathlib.Path) -> dict[str, list[pathlib.Path]]:
    """``{class name: sorted image files}`` for every sub-folder of ``root`` holding images."""
    return scan(root).classes


def decode(files: list[pathlib.Path], size: int, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode and resize to uint8 ``[N, channels, size, size]`` (antialiased, squashed: no crop),
    and the indices of the files that could not be decoded (left out of the images)."""
    out = torch.empty(len(files), channels, size, size, dtype=torch.uint8)
    bad = []
    for i, f in enumerate(files):
        try:
            img = read_image(f, channels)
        except UndecodableImage:
            bad.append(i)
            continue
        if img.shape[-2:] != (size, size):
            img = (
                F.interpolate(
                    img[None].float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
                )[0]
                .round()
                .clamp(0, 255)
                .to(torch.uint8)
            )
        out[i] = img
    skipped = torch.tensor(bad, dtype=torch.int64)
    keep = torch.ones(len(files), dtype=torch.bool)
    keep[skipped] = False
    return out[keep], skipped


#: undecodable files named in the warning (the count covers them all)
NAMED_SKIPS = 5


def load_domain(
    root: pathlib.Path,
    classes: tuple[str, ...],
    size: int,
    channels: int,
    data_root: pathlib.Path,
    notes: list[str] | None = None,
) -> Domain:
    """The images of ``classes`` under ``root``, labelled by their index in ``classes``.

    Files that cannot be decoded are left out with a :class:`FolderPairNote` naming them and their
    count (on every load: the cache keeps which ones they were); the same line is appended to
    ``notes`` (the pair's :attr:`PairData.notes`: its records and a refused label budget say it).
    """
    found = class_folders(root)
    files, labels = [], []
    for label, c in enumerate(classes):
        files += found[c]
        labels += [label] * len(found[c])
    key = "folder-" + hashlib.sha1(f"{root}|{','.join(classes)}|{channels}".encode()).hexdigest()[:10]

    def fresh() -> dict[str, torch.Tensor]:
        images, skipped = decode(files, size, channels)
        keep = torch.ones(len(files), dtype=torch.bool)
        keep[skipped] = False
        return {"images": images, "labels": torch.tensor(labels, dtype=torch.int64)[keep], "skipped": skipped}

    tensors = cached(data_root, key, "all", size, files, fresh, base=root)
    skipped = [files[i] for i in tensors["skipped"].tolist()]
    if skipped:
        named = ", ".join(str(f.relative_to(root)) for f in skipped[:NAMED_SKIPS])
        more = f" and {len(skipped) - NAMED_SKIPS} more" if len(skipped) > NAMED_SKIPS else ""
        said = (
            f"folder pair: skipped {len(skipped)} of {len(files)} files under {root} that cannot be decoded "
            f"(corrupt, truncated or not images): {named}{more}. Delete or re-export them to use them."
        )
        warnings.warn(said, FolderPairNote, stacklevel=2)
        if notes is not None:
            notes.append(said)
    return Domain(root.name, tensors["images"], tensors["labels"].long(), classes)


def make_folder_pair(arguments: str) -> DomainPair:
    """The :class:`DomainPair` named ``folder:<arguments>`` (registered via ``PAIRS.register_factory``)."""
    opts = parse_arguments(arguments)
    source = pathlib.Path(opts["source"]).expanduser().resolve()
    target = pathlib.Path(opts["target"]).expanduser().resolve()
    try:
        size = int(opts["size"]) if "size" in opts else None
        channels = int(opts["channels"]) if "channels" in opts else None
        shots = int(opts.get("shots", 5))
    except ValueError as exc:
        raise RegistryError(f"folder pair: size, channels and shots are integers ({exc}). Usage: {USAGE}") from None
    if channels not in (None, 1, 3) or (size is not None and size < 8):
        raise RegistryError(
            f"folder pair: channels must be 1 or 3 and size at least 8, got channels={channels}, size={size}"
        )
    evaluation = opts.get("eval", "half")
    if evaluation not in ("half", "all"):
        raise RegistryError(f"folder pair: eval must be 'half' or 'all', got {evaluation!r}")

    src_listing, tgt_listing = scan(source), scan(target)
    src_classes, tgt_classes = src_listing.classes, tgt_listing.classes
    _refuse_near_miss_names(source, src_classes, target, tgt_classes)
    detected = []
    if channels is None or size is None:
        # Guessing wrong is costly: grey images read as RGB get the 3-channel conv net (several
        # times slower than LeNet on a CPU) and a 3x larger cache, for no accuracy.
        found_channels, side = detect_format([src_classes, tgt_classes])
        if channels is None:
            channels = found_channels
            detected.append(f"{'grey (1 channel)' if channels == 1 else 'colour (3 channels)'}")
        if size is None:
            size = min(max(side, MIN_SIZE[channels]), MAX_SIZE)
            detected.append(f"size {size} px (median image side {side} px)")
    augment = opts.get("augment", "none" if size <= 64 else "resized_crop_flip")
    if augment not in AUGMENTATIONS:
        raise RegistryError(f"folder pair: augment must be one of {', '.join(AUGMENTATIONS)}, got {augment!r}")
    backbone = opts.get("backbone") or _default_backbone(size, channels)
    BACKBONES.get(backbone)  # an unknown backbone fails now, listing the valid ones
    shared = tuple(sorted(set(src_classes) & set(tgt_classes)))
    if not shared:
        raise RegistryError(
            f"folder pair: the source and target share no class folder name.\n"
            f"  source {source}: {', '.join(sorted(src_classes))}\n"
            f"  target {target}: {', '.join(sorted(tgt_classes))}\n"
            "classes are matched by exact folder name: rename one domain's class folders to the other's names"
        )
    skipped = sorted(set(src_classes) ^ set(tgt_classes))
    # the adaptation split's smallest class, from file counts alone (no decoding): eval=half keeps
    # n - round(n/2) of a class's n images for adaptation, exactly as stratified_split(.., 0.5) does
    counts = [len(tgt_classes[c]) for c in shared]
    max_shots = min(counts) if evaluation == "all" else min(n - round(n * 0.5) for n in counts)
    if "shots" not in opts:  # the default budget shrinks to what small folders hold
        shots = min(shots, max_shots)
    if not 0 <= shots <= max_shots:
        raise RegistryError(f"folder pair: {shots_error(f'folder:{arguments}', shots, max_shots, key='shots')}")

    def load(data_root: pathlib.Path) -> PairData:
        notes: list[str] = []  # undecodable files: the pair's max_target_shots counted them (no decoding then)
        s = load_domain(source, shared, size, channels, data_root, notes)
        t = load_domain(target, shared, size, channels, data_root, notes)
        s_train, s_val = stratified_split(s.labels, 0.1, seed=0)
        if evaluation == "all":
            everything = torch.arange(len(t))
            t_adapt, t_eval = everything, everything
        else:
            t_adapt, t_eval = stratified_split(t.labels, 0.5, seed=0)
        return PairData(s, t, s_train, s_val, t_adapt, t_eval, tuple(notes))

    rgb = channels == 3
    note = (
        "target: adapt on all of it and evaluate on all of it (transductive)"
        if evaluation == "all"
        else "target: half unlabelled for adaptation, the other half (stratified, seed 0) for evaluation"
    )
    label = folder_label(arguments)
    left_out = _left_out(source, src_listing, target, tgt_listing, skipped)
    if left_out:
        note += f"; {left_out}"
    description = f"{label}: {source.name} → {target.name}, {len(shared)} shared classes from image folders"
    if detected:
        found = (
            f"detected from the images: {', '.join(detected)}; backbone {backbone}"
            f"{'' if 'backbone' in opts else ' (default for this input)'}"
        )
        description += f"; {found}"
        note += f"; {found}"
        warnings.warn(
            f"folder pair {label}: {found}. Set channels=/size=/backbone= in the pair name to choose otherwise.",
            FolderPairNote,
            stacklevel=2,
        )
    if left_out:  # said at once (not only in the description): a class or file left out changes the task
        warnings.warn(f"folder pair {label}: {left_out}", FolderPairNote, stacklevel=2)
    return DomainPair(
        name=f"folder:{_absolute_arguments(arguments)}",
        description=description,
        load=load,
        num_classes=len(shared),
        backbone=backbone,
        channels=channels,
        image_size=size,
        mean=IMAGENET_MEAN if rgb else (0.5,),
        std=IMAGENET_STD if rgb else (0.5,),
        augment=augment,
        schedule=Schedule(steps=1000, batch_size=32, lr=0.01, eval_every=250),
        target_shots=shots,
        max_target_shots=max_shots,
        protocol_note=note,
    )


def _absolute_arguments(arguments: str) -> str:
    """``arguments`` with a relative (or ``~``) source/target made absolute against the current
    directory, the rest as given; unchanged when both are absolute already (run ids stay).

    The matrix, the records and the workers then use this spelling: a relative name meant
    another folder in every directory it was run from, and a second ``dabench run`` elsewhere
    with the same text found the first one's runs complete (same run id, other images).
    """
    opts = parse_arguments(arguments)
    if all(os.path.isabs(opts[k]) for k in ("source", "target")):  # "~/x" is not: it is expanded
        return arguments
    for k in ("source", "target"):
        opts[k] = os.path.abspath(os.path.expanduser(opts[k]))  # not resolve(): keep the user's symlinks
    return ",".join(f"{k}={v}" for k, v in opts.items())


def _canonical(name: str) -> str:
    return " ".join(name.split()).casefold()


def _refuse_near_miss_names(
    source: pathlib.Path, src: dict[str, list[pathlib.Path]], target: pathlib.Path, tgt: dict[str, list[pathlib.Path]]
) -> None:
    """Class folders whose names differ only in case or white space (``Cat`` / ``cat``, ``dog `` /
    ``dog``) are surely one class: matched by exact name they were both dropped as one-domain
    classes, silently shrinking the task. Refused, naming them, so the folders get renamed."""
    misses = [
        (a, b)
        for a in sorted(set(src) - set(tgt))
        for b in sorted(set(tgt) - set(src))
        if _canonical(a) == _canonical(b)
    ]
    if misses:
        listed = "; ".join(f"source {source / a!s}/ vs target {target / b!s}/" for a, b in misses)
        raise RegistryError(
            f"folder pair: class folder names differ only in case or spaces ({listed}); classes are matched "
            f"by exact name: rename the folders so that they are spelled the same"
        )


def _left_out(source: pathlib.Path, src: Listing, target: pathlib.Path, tgt: Listing, one_domain: list[str]) -> str:
    """One sentence on what the pair leaves out: classes of one domain only (empty folders said as
    such), and files that are not images by their suffix, with counts; empty when nothing is."""
    parts = []
    for root, listing, other in ((source, src, tgt), (target, tgt, src)):
        only = [c for c in one_domain if c in listing.classes and c not in other.empty]  # else said as empty
        if only:
            parts.append(f"classes only in {root} skipped: {', '.join(only)}")
        empty = [c for c in listing.empty if c in other.classes]
        if empty:
            parts.append(f"class folders without images in {root} (class skipped): {', '.join(empty)}")
        if listing.ignored:
            shown = ", ".join(str(f.relative_to(root)) for f in listing.ignored[:NAMED_SKIPS])
            more = f" and {len(listing.ignored) - NAMED_SKIPS} more" if len(listing.ignored) > NAMED_SKIPS else ""
            parts.append(
                f"{len(listing.ignored)} files under {root} ignored (not {'/'.join(s[1:] for s in IMAGE_SUFFIXES)}): "
                f"{shown}{more}"
            )
    return "; ".join(parts)


def _default_backbone(size: int, channels: int) -> str:
    if size > 64:
        return "resnet50"
    if channels == 3 and "cnn32" in BACKBONES:
        return "cnn32"
    return "lenet"


PAIRS.register_factory("folder", make_folder_pair, label=folder_label)
