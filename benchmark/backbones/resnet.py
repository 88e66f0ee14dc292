"""ResNet-50 (He et al. 2016) from timm with ImageNet weights: the Office-31 backbone of DAN, DANN,
CDAN and their successors (2,048-d pooled features; the engine trains it at 0.1x the lr)."""

from __future__ import annotations

from ..core.parsing import parse_bool
from ..core.registry import register_backbone
from .timm_base import TimmBackbone, WeightsUnavailable, load_features, read_state_dict

HOW_TO = (
    "Provide ImageNet weights with --set backbone.weights=PATH (a ResNet-50 state dict: torchvision's "
    "resnet50-*.pth or a timm resnet50 checkpoint; the keys are the same), or put timm's 'resnet50' weights "
    "in the Hugging Face cache on a machine that is online, or train from scratch with "
    "--set backbone.pretrained=false (not the published protocol). Offline, HF_HUB_OFFLINE=1 makes this "
    "check fail at once instead of after the hub client's retries."
)


@register_backbone("resnet50")
def resnet50(
    in_channels: int = 3, image_size: int = 224, pretrained: bool | str = True, weights: str | None = None
) -> TimmBackbone:
    """ResNet-50 (timm), ImageNet weights (or backbone.weights=PATH); 2,048-d pooled features.

    Options: ``weights=PATH`` (local state dict, wins over ``pretrained``), ``pretrained`` (default True:
    timm's ImageNet weights, downloaded or from the cache; a clear error when neither works)."""
    import timm  # late: timm takes seconds to import and only timm backbones need it

    if in_channels != 3:
        raise ValueError(
            f"backbone resnet50 takes 3-channel (RGB) images, the pair has {in_channels} channel(s): "
            "use a backbone for its images (lenet, cnn32) or a 3-channel pair (folder:...,channels=3)"
        )
    if weights:
        model = timm.create_model("resnet50", pretrained=False, num_classes=0)
        load_features(model, read_state_dict(weights), str(weights))
        return TimmBackbone(model, pretrained=True)
    if not parse_bool(pretrained, "backbone.pretrained"):
        return TimmBackbone(timm.create_model("resnet50", pretrained=False, num_classes=0), pretrained=False)
    try:
        model = timm.create_model("resnet50", pretrained=True, num_classes=0)
    except Exception as exc:  # offline, no cache, hub errors: all mean "no weights"
        raise WeightsUnavailable(
            f"resnet50: ImageNet weights could not be loaded ({type(exc).__name__}: {exc}). {HOW_TO}"
        ) from exc
    return TimmBackbone(model, pretrained=True)
