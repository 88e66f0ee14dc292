"""Data on the device: uint8 domains, index sampling, augmentation and normalisation in batch.

Nothing here runs Python per image: a batch is a gather of indices from a uint8 tensor
already on the run's device, followed by batched float ops (one affine ``grid_sample``
does crops, shifts, scaling and flips at once).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ..core.domain import Domain, DomainPair, PairData
from ..core.method import TARGET_ACCESS, TargetLabelsError


def draw_shots(labels: torch.Tensor, pool: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """``k`` indices per class from ``pool`` (indices into ``labels``), fixed by ``seed``.

    Fewer than ``k`` images of a class in the pool take all of them. Depends only on
    (labels, pool, k, seed), so every method of one seed gets the same shots.
    """
    if k <= 0:
        return torch.zeros(0, dtype=torch.long)
    g = torch.Generator().manual_seed(10_007 * seed + 17)
    pool_labels = labels[pool]
    chosen = []
    for c in torch.unique(pool_labels).tolist():
        members = pool[pool_labels == c]
        chosen.append(members[torch.randperm(len(members), generator=g)[:k]])
    return torch.cat(chosen).sort().values


#: images of the adaptation split the label-free validators score (entropy, IM, SND). SND is
#: quadratic in it (a 2048² float32 similarity matrix is 16 MiB); the standard error of a mean
#: entropy over 2048 images is ~2 % of its per-image spread; and predicting 2048 extra images per
#: evaluation costs at most one more evaluation split of that size (nothing on a transductive pair,
#: where they are taken from the evaluation predictions). Smaller adaptation splits are used whole.
VALIDATOR_SAMPLES = 2048


def validator_sample(n: int, seed: int, size: int = VALIDATOR_SAMPLES) -> torch.Tensor:
    """Sorted positions of a uniform random sample of ``size`` of ``n`` images (all if ``n <= size``).

    Fixed by ``seed`` and drawn with its own generator, so the same images are scored at every
    evaluation of a run and no training RNG stream moves. Uniform, not stratified: stratifying
    would use the target labels a label-free validator must not see; and not the first ``size``
    in stored order, which on a class-sorted domain (Office-31) skips whole classes.
    """
    if n <= size:
        return torch.arange(n)
    g = torch.Generator().manual_seed(7_919 * seed + 101)
    return torch.randperm(n, generator=g)[:size].sort().values


def eval_indices(data: PairData, shots: torch.Tensor) -> torch.Tensor:
    """The seed's evaluation set: ``target_eval`` minus any shot images (they were seen labelled)."""
    if len(shots) == 0:
        return data.target_eval
    keep = ~torch.isin(data.target_eval, shots)
    return data.target_eval[keep]


class Stream:
    """Endless shuffled batches of indices on the device, an epoch at a time, no host sync."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator, device: torch.device) -> None:
        if n == 0:
            raise ValueError("cannot sample batches from an empty split")
        self.n, self.batch_size, self.g, self.device = n, batch_size, generator, device
        self._perm = torch.empty(0, dtype=torch.long, device=device)
        self._pos = 0

    def next(self) -> torch.Tensor:
        parts, need = [], self.batch_size
        while need > 0:
            if self._pos >= len(self._perm):
                self._perm = torch.randperm(self.n, generator=self.g, device=self.device)
                self._pos = 0
            take = self._perm[self._pos : self._pos + need]
            self._pos += len(take)
            need -= len(take)
            parts.append(take)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def state_dict(self) -> dict:
        """The current epoch's permutation and the position in it: with the generator's state,
        all a resumed run needs to draw the batches the uninterrupted run would have drawn."""
        return {"perm": self._perm, "pos": self._pos}

    def load_state_dict(self, state: dict) -> None:
        perm = state["perm"].to(self.device)
        if perm.numel() and (perm.numel() != self.n or int(state["pos"]) > perm.numel()):
            raise ValueError(
                f"stream state does not fit this split: permutation of {perm.numel()} at position "
                f"{state['pos']}, but the split has {self.n} images"
            )
        self._perm, self._pos = perm, int(state["pos"])


class StreamCursor:
    """A :class:`Stream` read from inside a captured CUDA graph: the step's indices are a slice of
    a device buffer at device-side positions, so a replayed step needs no per-step index copy.

    The host side mirrors the stream exactly: :meth:`prepare` (before each replay) advances the
    stream's own ``_perm``/``_pos`` as :meth:`Stream.next` would, so ``Stream.state_dict`` (the
    checkpoint) is the eager one. Within an epoch it launches nothing: the graph's :meth:`take`
    gathers ``buf[pos]`` (``pos``: the B positions ``offset … offset + B − 1``) and advances ``pos`` itself. Only when a batch reaches
    the end of the permutation does :meth:`prepare` call ``Stream.next()`` (the reshuffle, with
    the stream's generator, on the device, no host sync) and lay the batch and the new epoch's
    rest into the buffer (two device copies and one fill), once per epoch.

    Buffer layout after a layout at position ``pos``: ``buf[0 : B]`` the step's batch (at an
    epoch boundary) followed by ``perm[pos:]``; ``B + n`` entries hold every case, a batch larger
    than the split (each step then is a boundary) included.
    """

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        n, b, dev = stream.n, stream.batch_size, stream.device
        self.buf = torch.zeros(b + n, dtype=torch.long, device=dev)
        #: the positions in ``buf`` of the next batch: one device tensor the graph advances in place
        #: (an offset plus an arange would be one kernel more per stream and step); reset only at boundaries
        self.pos = torch.arange(b, device=dev)
        self._arange = torch.arange(b, device=dev)
        self._pending = 0  # deferred advances of ``pos`` (:meth:`take` with ``defer``)
        rest = stream._perm[stream._pos :]
        self.buf[: len(rest)].copy_(rest)

    def prepare(self) -> None:
        """Before a step: make ``take()`` return what ``Stream.next()`` returns now (host bookkeeping only, within an epoch)."""
        s = self.stream
        if s._pos + s.batch_size <= len(s._perm):
            s._pos += s.batch_size  # the graph's take() reads buf[pos] and moves pos on
            return
        idx = s.next()  # the epoch boundary: the eager reshuffle(s), same generator, same call
        rest = s._perm[s._pos :]
        self.buf[: len(idx)].copy_(idx)
        self.buf[len(idx) : len(idx) + len(rest)].copy_(rest)
        self.pos.copy_(self._arange)

    def take(self, defer: bool = False) -> torch.Tensor:
        """The step's indices, read and advanced on the device (what the captured graph runs).

        ``defer``: ``pos`` is not advanced here but by whoever calls :meth:`advance` after the
        step (a captured step advances every stream's ``pos`` and its step counter in one kernel);
        a second ``take`` before that advances first, so it reads the next batch all the same."""
        if self._pending:
            self.pos.add_(self._pending)
            self._pending = 0
        idx = self.buf.index_select(0, self.pos)
        if defer:
            self._pending = self.stream.batch_size
        else:
            self.pos.add_(self.stream.batch_size)
        return idx

    def advance(self) -> tuple[torch.Tensor, int] | None:
        """``(pos, by)``: the deferred advance of ``pos`` the caller must apply (``pos += by``), or None."""
        if not self._pending:
            return None
        by, self._pending = self._pending, 0
        return self.pos, by


def augment_affine(
    x: torch.Tensor, kind: str, out_size: int, generator: torch.Generator | None, train: bool
) -> torch.Tensor:
    """Augment a float batch ``[B, C, H, W]`` with one batched affine resample.

    kinds: ``none`` (resize only), ``shift`` (±2/28 translation, digits), ``crop_flip``
    (4-px padded random crop + horizontal flip, CIFAR style), ``resized_crop_flip``
    (scale 0.08–1, ratio 3/4–4/3, flip; ImageNet style). Evaluation (``train=False``)
    is the identity for all kinds but ``resized_crop_flip``, which takes an 87.5% centre crop.
    """
    b, _, h, w = x.shape
    if kind == "none" or (not train and kind != "resized_crop_flip"):
        if not _identity(kind, train, (h, w), out_size):
            x = F.interpolate(x, size=(out_size, out_size), mode="bilinear", align_corners=False, antialias=True)
        return x
    dev = x.device

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, device=dev)

    sx = torch.ones(b, device=dev)
    sy = torch.ones(b, device=dev)
    tx = torch.zeros(b, device=dev)
    ty = torch.zeros(b, device=dev)
    flip = torch.ones(b, device=dev)
    if not train:  # centre crop for resized_crop_flip
        sx, sy = sx * 0.875, sy * 0.875
    elif kind == "shift":
        tx = (rand(b) * 2 - 1) * (4.0 / w)  # grid coords span 2, so 4/w = ±2 px
        ty = (rand(b) * 2 - 1) * (4.0 / h)
    elif kind == "crop_flip":
        tx = (torch.floor(rand(b) * 9) - 4) * (2.0 / w)
        ty = (torch.floor(rand(b) * 9) - 4) * (2.0 / h)
        flip = torch.where(rand(b) < 0.5, -1.0, 1.0)
    elif kind == "resized_crop_flip":
        area = 0.08 + rand(b) * 0.92
        # Python-float constants: torch.tensor(..., device=cuda) here was two host→device copies
        # per batch, which CUDA's sync-debug mode flags as synchronising (seen on an H200)
        log_ratio = math.log(3 / 4) + rand(b) * math.log(16 / 9)
        ratio = torch.exp(log_ratio)
        sx = torch.sqrt(area * ratio).clamp(max=1.0)
        sy = torch.sqrt(area / ratio).clamp(max=1.0)
        tx = (rand(b) * 2 - 1) * (1 - sx)
        ty = (rand(b) * 2 - 1) * (1 - sy)
        flip = torch.where(rand(b) < 0.5, -1.0, 1.0)
    else:
        raise ValueError(f"unknown augmentation {kind!r}")
    theta = torch.zeros(b, 2, 3, device=dev, dtype=x.dtype)
    theta[:, 0, 0] = sx * flip
    theta[:, 0, 2] = tx
    theta[:, 1, 1] = sy
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, [b, x.shape[1], out_size, out_size], align_corners=False)
    pad = "reflection" if kind == "crop_flip" else "zeros"
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=pad, align_corners=False)


def _identity(kind: str, train: bool, hw: tuple[int, ...], out_size: int) -> bool:
    """Whether :func:`augment_affine` would return its input unchanged."""
    return (kind == "none" or (not train and kind != "resized_crop_flip")) and hw == (out_size, out_size)


class Split:
    """A split on the device: uint8 images and their labels.

    ``base`` is the uploaded uint8 tensor the images are read from, possibly shared (with other
    splits, other seeds' runs). ``rows`` is ``None`` when ``base`` holds exactly the split, in
    order; otherwise (a device tensor) the positions in ``base`` of the split's images, so a split
    that is a subset of an uploaded one costs no second copy of its images. ``labels`` are always
    the split's own, in split order. The engine reads batches with :meth:`gather`; ``images`` is
    the split's images as one tensor (a gathered copy for a ``rows`` view), and assigning it gives
    this split alone its own images.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor | None = None) -> None:
        self.base, self.labels, self.rows = images, labels, rows

    @property
    def images(self) -> torch.Tensor:
        return self.base if self.rows is None else self.base[self.rows]

    @images.setter
    def images(self, value: torch.Tensor) -> None:
        self.base, self.rows = value, None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def gather(self, idx: torch.Tensor) -> torch.Tensor:
        """The uint8 images at split positions ``idx`` (one gather; two for a ``rows`` view)."""
        return self.base[idx if self.rows is None else self.rows[idx]]


def upload(domain: Domain, idx: torch.Tensor, device: torch.device) -> Split:
    """The images and labels of ``domain`` at ``idx`` as a :class:`Split` of its own on ``device``."""
    return Split(domain.images[idx].to(device, non_blocking=True), domain.labels[idx].to(device, non_blocking=True))


#: the pair's index sets (PairData fields) a DeviceSplits may upload, per domain, in the order a view
#: looks for one that contains it
_BASES: dict[str, tuple[str, ...]] = {
    "source": ("source_train", "source_val"),
    "target": ("target_adapt", "target_eval"),
}


class DeviceSplits:
    """A pair's splits uploaded ONCE to ``device``, for the :class:`DeviceData` of every seed of a group.

    The seeds of one ``--seed-batch`` group read the same images; only their shots, evaluation
    subset, generator and streams differ (those stay in each seed's :class:`DeviceData`). Each
    uploaded tensor ("base") is one of the pair's index sets (``source_train``, ``source_val``,
    ``target_adapt``, ``target_eval``), gathered from the domain and moved to the device on first
    use; ``target_eval`` is not uploaded at all when it lies inside ``target_adapt`` (a
    transductive pair such as Office-31 evaluates on its adaptation images), so even one run holds
    one copy of the target images, not two. A split that is a subset of a base (a seed's
    evaluation set, its target split minus its shot images) is a view: the base's images plus
    per-seed ``rows``.

    Bound to one :class:`PairData` object and one device: :class:`DeviceData` refuses an instance
    built for another, and nothing is cached beyond the instance (no module-level cache), so device
    copies never leak across pairs, devices or processes. Images are stored raw (uint8, as the
    loader gave them): augmentation and normalisation are applied per batch by each
    :class:`DeviceData` from its own pair, so sharing the raw images cannot mix transforms.
    """

    def __init__(self, data: PairData, device: torch.device | str) -> None:
        self.data, self.device = data, torch.device(device)
        self._bases: dict[str, Split] = {}

    def _base(self, name: str) -> Split:
        if name not in self._bases:
            self._bases[name] = upload(getattr(self.data, name.split("_")[0]), getattr(self.data, name), self.device)
        return self._bases[name]

    def view(self, domain: str, indices: torch.Tensor) -> Split:
        """The split of ``indices`` (into the ``domain`` "source"/"target", CPU) backed by the first
        of the pair's index sets that contains all of them (uploaded on first use): the base's own
        tensors when ``indices`` is the whole index set in order, else the base plus ``rows``.

        A new :class:`Split` object every call (tensors shared), so replacing one run's
        ``split.images`` never changes another's."""
        if domain not in _BASES:
            raise ValueError(f"DeviceSplits.view: domain {domain!r} is not one of {sorted(_BASES)}")
        n_domain = len(getattr(self.data, domain).labels)
        for name in _BASES[domain]:
            base_idx = getattr(self.data, name)
            if torch.equal(base_idx, indices):  # the whole index set, in order: the base itself
                base = self._base(name)
                return Split(base.base, base.labels)
            pos = torch.full((n_domain,), -1, dtype=torch.long)
            pos[base_idx] = torch.arange(len(base_idx))
            rows = pos[indices]
            if len(base_idx) and bool((rows >= 0).all()):
                base = self._base(name)
                rows = rows.to(self.device)
                return Split(base.base, base.labels[rows], rows)
        raise ValueError(
            f"DeviceSplits.view: {len(indices)} {domain} indices are not all inside one of the pair's "
            f"splits {', '.join(_BASES[domain])}"
        )


def device_bytes(*datas: DeviceData) -> int:
    """Bytes of device memory the splits of ``datas`` hold, each shared storage counted once
    (what a seed-batched group's data costs; ``untyped_storage`` identifies a shared tensor)."""
    seen: dict[tuple[str, int], int] = {}
    for d in datas:
        for split in (d.source, d.source_val, d.target, d.shots, d.target_eval):
            for t in (split.base, split.labels, split.rows):
                if t is not None:
                    st = t.untyped_storage()
                    seen[(str(t.device), st.data_ptr())] = st.nbytes()
    return sum(seen.values())


class DeviceData:
    """A pair's splits moved once onto ``device``, with batched sampling and preprocessing.

    ``train_shots`` labelled images per class are drawn from the adaptation split for ``seed``;
    the ``eval_shots`` draw of the seed (the one every method of the seed shares) and the
    training shots are removed from the evaluation split.

    The label-free validators score :func:`validator_sample` of the adaptation split
    (``target``), never the evaluation split as such. Sampled images that are also evaluation
    images (a transductive pair) are read from the evaluation predictions
    (``validator_from_eval``: positions in ``target_eval``); only the others are predicted again
    (``validator_forward``: positions in ``target``).

    The splits' device tensors come from ``splits`` (:class:`DeviceSplits`): the seeds of one
    seed-batched group pass the same one and share one copy of the pair's images and labels; without
    it the run uploads its own. Per seed: the shots (a small copy), the evaluation subset (``rows``
    into a shared upload), the validator positions, the generator and the streams.
    """

    def __init__(
        self,
        pair: DomainPair,
        data: PairData,
        device: torch.device,
        seed: int,
        train_shots: int,
        eval_shots: int,
        splits: DeviceSplits | None = None,
    ) -> None:
        self.pair, self.device, self.pair_data = pair, device, data
        self.channels_last = device.type == "cuda"
        if splits is None:  # a run of its own: its own uploads
            splits = DeviceSplits(data, device)
        elif splits.data is not data or splits.device != torch.device(device):
            raise ValueError(
                f"DeviceData: splits= was built for another pair data or device ({splits.device}); this run's "
                f"device is {device}: pass DeviceSplits(data, device) of this run's own pair data and device"
            )
        shots = draw_shots(data.target.labels, data.target_adapt, train_shots, seed)
        removed = torch.cat([shots, draw_shots(data.target.labels, data.target_adapt, eval_shots, seed)]).unique()
        evaluation = eval_indices(data, removed)

        # the pair's splits are shared (one device copy per group: ``splits``); what depends on the
        # seed is a view (``rows``) or, for the few shot images the training loop gathers every
        # step, a small copy of its own (a view would add one gather per step)
        self.source = splits.view("source", data.source_train)
        self.source_val = splits.view("source", data.source_val)
        self.target = splits.view("target", data.target_adapt)  # labels kept only for diagnostics
        self.shots = upload(data.target, shots, device)
        self.target_eval = splits.view("target", evaluation)
        self.shot_indices = shots
        self.eval_size = len(evaluation)
        sample_pos = validator_sample(len(data.target_adapt), seed)  # positions in the adaptation split
        sample = data.target_adapt[sample_pos]  # indices into the target domain
        eval_pos = torch.full((len(data.target),), -1, dtype=torch.long)
        eval_pos[evaluation] = torch.arange(len(evaluation))
        in_eval = eval_pos[sample]
        self.validator_from_eval = in_eval[in_eval >= 0].to(device)
        self.validator_forward = sample_pos[in_eval < 0].to(device)
        self.validator_samples = len(sample)
        self.validator_positions = sample_pos  # positions in ``target`` (CPU): DEV's saved target features
        self.validator_overlaps_eval = bool(torch.isin(data.target_adapt, evaluation).any())
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.mean = torch.tensor(pair.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(pair.std, device=device).view(1, -1, 1, 1)
        # (x/255 − mean)/std as one affine map of the raw 0..255 values: x·scale + shift
        self.scale = 1.0 / (255.0 * self.std)
        self.shift = -self.mean / self.std

    def stream(self, split: Split, batch_size: int) -> Stream:
        return Stream(len(split), batch_size, self.generator, self.device)

    def preprocess(self, images_uint8: torch.Tensor, train: bool) -> torch.Tensor:
        """uint8 batch → augmented, normalised float batch on the device.

        ``(x/255 − mean)/std`` is one ``addcmul`` (``x·scale + shift``) at the end, on the uint8
        batch itself when the augmentation is the identity: one kernel where the textbook order
        takes four, which a small model's step feels (``dabench bench``'s ops/step). The
        resampling in between (bilinear, zero or reflection padding) is linear and maps 0 to 0, so
        it commutes with the 1/255 scaling: the same batch up to float rounding (~1e-7)."""
        kind, size = self.pair.augment, self.pair.image_size
        x: torch.Tensor = images_uint8
        if not _identity(kind, train, tuple(images_uint8.shape[-2:]), size):
            x = augment_affine(x.float(), kind, size, self.generator, train)
        x = torch.addcmul(self.shift, x, self.scale)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def batch_from(self, split: Split, idx: torch.Tensor, train: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        return self.preprocess(split.gather(idx), train), split.labels[idx]


class UnlabelledSplit:
    """A :class:`Split` without its labels: the target adaptation split as a method's ``fit`` sees it.

    The images (``len``, ``gather(idx)``, ``images``) are the split's own tensors, no copy; ``labels``
    raises :class:`~dabench.core.method.TargetLabelsError`. The engine keeps the labelled split
    (:class:`DeviceData`) for its evaluation and diagnostics.
    """

    def __init__(self, split: Split, name: str) -> None:
        self._split, self._name = split, name

    def __len__(self) -> int:
        return len(self._split)

    def gather(self, idx: torch.Tensor) -> torch.Tensor:
        """The uint8 images at split positions ``idx``."""
        return self._split.gather(idx)

    @property
    def images(self) -> torch.Tensor:
        return self._split.images

    @property
    def labels(self) -> torch.Tensor:
        raise TargetLabelsError(f"ctx.data.{self._name}.labels: the target labels are the engine's; {TARGET_ACCESS}")


#: DeviceData's attributes a method's ``fit`` does not get, each with what it holds: the evaluation
#: split and everything that leads to it or to the target domain's labels (FitData names them)
_ENGINE_ONLY: dict[str, str] = {
    "target_eval": "the evaluation split and its labels",
    "pair_data": "the loaded pair, every target label included",
    "eval_size": "the evaluation split's size",
    "validator_from_eval": "positions in the evaluation split",
    "validator_forward": "the validators' sample",
    "validator_samples": "the validators' sample",
    "validator_positions": "the validators' sample",
    "validator_overlaps_eval": "the validators' sample",
    "shot_indices": "the shots' places in the target domain",
}


class FitData:
    """What ``RunContext.data`` gives a method (its ``fit``): the run's :class:`DeviceData` without
    the target labels its protocol does not declare.

    ``source``, ``source_val`` and ``shots`` are the labelled splits (the shots: the ``k`` labelled
    target images per class of a few-shot run; empty for other runs); ``target`` is the adaptation
    split as an :class:`UnlabelledSplit`; ``batch_from``, ``preprocess``, ``stream``, ``generator``,
    ``pair``, ``device`` are the engine's. The evaluation split, the loaded pair data and the
    validators' sample are not here: reading one (or ``target.labels``) raises
    :class:`~dabench.core.method.TargetLabelsError`, naming the rule and what may be read instead.
    A view built once per run; the engine's step loop reads :class:`DeviceData` directly (no cost per step).
    """

    def __init__(self, data: DeviceData, pair: DomainPair, source_free: bool = False) -> None:
        self._data = data
        self.pair = pair  # the run's pair without its loader (RunContext.pair)
        self.device, self.channels_last = data.device, data.channels_last
        self.shots = data.shots
        self._source_free = source_free
        if not source_free:  # a source-free run adapts without source data: its fit reaches none
            self.source, self.source_val = data.source, data.source_val
        self.target = UnlabelledSplit(data.target, "target")

    @property
    def generator(self) -> torch.Generator:
        """The run's data generator (the engine may replace it: a failed CUDA-graph capture)."""
        return self._data.generator

    def stream(self, split: Split | UnlabelledSplit, batch_size: int) -> Stream:
        return Stream(len(split), batch_size, self._data.generator, self._data.device)

    def preprocess(self, images_uint8: torch.Tensor, train: bool) -> torch.Tensor:
        """uint8 batch → augmented, normalised float batch on the device (:meth:`DeviceData.preprocess`)."""
        return self._data.preprocess(images_uint8, train)

    def batch_from(
        self, split: Split | UnlabelledSplit, idx: torch.Tensor, train: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The preprocessed images of ``split`` at ``idx`` and their labels (``None`` for the unlabelled target)."""
        x = self._data.preprocess(split.gather(idx), train)
        return x, (None if isinstance(split, UnlabelledSplit) else split.labels[idx])

    def __getattr__(self, name: str) -> Any:  # only for names not set above
        if name in ("source", "source_val") and self.__dict__.get("_source_free"):
            raise TargetLabelsError(
                f"ctx.data.{name}: this run's protocol is source-free (the source-only network, then unlabelled "
                "target data only), so its fit reaches no source data; read the target through ctx.data.target"
            )
        if name in _ENGINE_ONLY:
            raise TargetLabelsError(f"ctx.data.{name} ({_ENGINE_ONLY[name]}) is the engine's; {TARGET_ACCESS}")
        raise AttributeError(
            f"ctx.data has no {name!r}; a method's fit reads source, source_val, shots, target (unlabelled), "
            "batch_from, preprocess, stream, generator, pair, device"
        )
