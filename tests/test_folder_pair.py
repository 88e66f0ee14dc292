"""The folder pair: ``folder:source=DIR,target=DIR`` on real image folders written by the test.

Images: scikit-learn's 8x8 UCI digits saved as PNG files. Source = one half, upscaled to 24 px,
grey; target = the other half at 12 px with inverted colours, saved as RGB. Source has an extra
class (``7``) and target another (``8``): only the shared classes may be used.
"""

from __future__ import annotations

import json
import pathlib
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import dabench
from dabench import PAIRS, RegistryError
from dabench.core.domain import MissingDataError
from dabench.datasets.folder import FolderPairNote, folder_label
from dabench.testing import isolated_registries

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated():
    """Each test builds its folder pairs afresh (so their detection notes are seen)."""
    with isolated_registries():
        yield


SHARED = ("0", "1", "2")
PER_CLASS = 12  # images per class and domain


def _write_domain(
    root: pathlib.Path,
    images: np.ndarray,
    labels: np.ndarray,
    classes: tuple[str, ...],
    size: int,
    invert: bool,
    rgb: bool,
) -> None:
    from torchvision.io import write_png

    for c in classes:
        (root / c).mkdir(parents=True)
        picked = images[labels == int(c)][:PER_CLASS]
        for i, img in enumerate(picked):
            x = torch.from_numpy(img.astype(np.float32) / 16.0)[None, None]
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)[0]
            x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
            if invert:
                x = 255 - x
            if rgb:
                x = x.expand(3, -1, -1).contiguous()
            with warnings.catch_warnings():  # torchvision's notice that torchcodec exists
                warnings.simplefilter("ignore", DeprecationWarning)
                write_png(x, str(root / c / f"{i:03d}.png"))


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    from sklearn.datasets import load_digits

    d = load_digits()
    half = len(d.target) // 2
    base = tmp_path_factory.mktemp("folders")
    src, tgt = base / "src", base / "tgt"
    _write_domain(src, d.images[:half], d.target[:half], SHARED + ("7",), size=24, invert=False, rgb=False)
    _write_domain(tgt, d.images[half:], d.target[half:], SHARED + ("8",), size=12, invert=True, rgb=True)
    (tgt / "empty").mkdir()  # a folder without images is not a class
    (tgt / "0" / "notes.txt").write_text("not an image")
    return src, tgt


def test_shared_classes_decode_resize_and_split(folders, tmp_path):
    src, tgt = folders
    pair = PAIRS.get(f"folder:source={src},target={tgt},size=28,channels=1")
    assert pair.num_classes == 3 and pair.channels == 1 and pair.image_size == 28
    assert pair.backbone == "lenet"  # grey, small
    assert "7" in pair.protocol_note and "8" in pair.protocol_note  # skipped classes are said
    data = pair.load(tmp_path)
    assert data.source.classes == SHARED == data.target.classes
    assert data.source.images.shape == (3 * PER_CLASS, 1, 28, 28) and data.source.images.dtype == torch.uint8
    assert data.target.images.shape == (3 * PER_CLASS, 1, 28, 28)
    # inverted colours survived decoding: the target background (the corners) is white
    assert data.target.images[:, :, 0, 0].float().mean() > 200 > data.source.images[:, :, 0, 0].float().mean()
    # 50/50 stratified, disjoint target split
    adapt, evaluation = data.target_adapt, data.target_eval
    assert len(set(adapt.tolist()) & set(evaluation.tolist())) == 0
    assert len(adapt) + len(evaluation) == len(data.target)
    assert torch.bincount(data.target.labels[evaluation]).tolist() == [PER_CLASS // 2] * 3
    # a second load reads the decoded cache and gives the same tensors
    again = pair.load(tmp_path)
    assert torch.equal(again.target.images, data.target.images)
    assert list((tmp_path / "cache").glob("folder-*.pt"))


def test_transductive_rgb_defaults(folders, tmp_path):
    src, tgt = folders
    pair = PAIRS.get(f"folder:source={src},target={tgt},eval=all,channels=3,size=32")
    assert pair.channels == 3 and pair.image_size == 32 and pair.mean == (0.485, 0.456, 0.406)
    data = pair.load(tmp_path)
    assert data.source.images.shape[1:] == (3, 32, 32)
    assert torch.equal(data.target_adapt, data.target_eval) and len(data.target_eval) == len(data.target)


def test_no_shared_class_lists_both_sets(tmp_path, folders):
    src, _ = folders
    other = tmp_path / "other"
    (other / "cat").mkdir(parents=True)
    (other / "cat" / "a.png").write_bytes((src / "0" / "000.png").read_bytes())
    with pytest.raises(RegistryError) as err:
        PAIRS.get(f"folder:source={src},target={other}")
    msg = str(err.value)
    assert "share no class" in msg and "0, 1, 2, 7" in msg and "cat" in msg
    assert "rename one domain's class folders" in msg  # the fix, not only the symptom


def test_bad_arguments_say_what_is_wrong(folders, tmp_path):
    src, tgt = folders
    with pytest.raises(RegistryError, match="missing target"):
        PAIRS.get(f"folder:source={src}")
    with pytest.raises(RegistryError, match="bad option 'colour=red'"):
        PAIRS.get(f"folder:source={src},target={tgt},colour=red")
    with pytest.raises(RegistryError, match="unknown backbone 'nope'"):
        PAIRS.get(f"folder:source={src},target={tgt},backbone=nope")
    with pytest.raises(MissingDataError, match="no such folder"):
        PAIRS.get(f"folder:source={tmp_path / 'absent'},target={tgt}")


def test_cli_runs_a_method_on_the_folder_pair(folders, tmp_path, capsys):
    """End to end through the CLI: the comma-separated options stay one pair name."""
    from dabench.cli import main

    src, tgt = folders
    name = f"folder:source={src},target={tgt},size=28,channels=1,backbone=lenet"
    rc = main(
        [
            "run",
            "--methods",
            "source-only,dann",
            "--pairs",
            name,
            "--seeds",
            "0",
            "--set",
            "steps=4",
            "--set",
            "eval_every=4",
            "--set",
            "batch_size=8",
            "--results",
            str(tmp_path / "res"),
            "--data-root",
            str(tmp_path / "data"),
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    out = capsys.readouterr()
    assert rc == 0, out.err
    records = [json.loads(p.read_text()) for p in (tmp_path / "res").rglob("*.json")]
    runs = [r for r in records if "spec" in r]
    assert {r["spec"]["method"] for r in runs} == {"source-only", "dann"}
    assert all(r["status"] == "complete" and r["spec"]["pair"] == name for r in runs)
    assert all(r["eval_size"] == 3 * PER_CLASS // 2 for r in runs)
    # the record says what data it saw, without the folders at hand
    for r in runs:
        d = r["data"]
        assert d["classes"] == 3 and d["target_eval"] == 3 * PER_CLASS // 2 and d["source_train"] > 0
        assert d["protocol"] == dabench.core.registry.PAIRS.get(name).protocol_note != ""
    assert "dann" in out.out  # the leaderboard row
    # tables show the pair under a short name, never the absolute paths
    short = "src-tgt (size=28,channels=1,backbone=lenet)"
    assert short in out.out and str(src) not in out.out
    board = dabench.leaderboard(dabench.load_results(tmp_path / "res"))
    assert board.pairs == (short,)


def test_python_api_runs_the_folder_pair(folders, tmp_path):
    src, tgt = folders
    name = f"folder:name=digits-mine,source={src},target={tgt},size=16,channels=1"
    summary = dabench.run(
        methods=["source-only"],
        pairs=[name],
        seeds=[0],
        results_dir=tmp_path / "res",
        data_root=tmp_path / "data",
        device="cpu",
        overrides={"steps": 2, "eval_every": 2, "batch_size": 8},
    )
    assert [r["status"] for r in summary.ran] == ["complete"]
    assert summary.ran[0]["spec"]["pair"] == name  # the full name: workers rebuild the pair from it
    df = dabench.load_results(tmp_path / "res")
    assert list(df["pair"]) == ["digits-mine"]
    assert dabench.leaderboard(df).pairs == ("digits-mine",)


def test_grey_and_size_are_detected_and_said(folders, tmp_path):
    """Grey PNGs (source, 1 channel, 24 px) and grey saved as RGB (target, 12 px): one grey pair on
    LeNet at 28 px, not the 3-channel conv net; the note says what was detected."""
    src, tgt = folders
    with pytest.warns(FolderPairNote) as caught:
        pair = PAIRS.get(f"folder:source={src},target={tgt}")
    assert pair.channels == 1 and pair.image_size == 28 and pair.backbone == "lenet" and pair.mean == (0.5,)
    note = str(caught[0].message)
    assert "grey (1 channel)" in note and "size 28 px (median image side 24 px)" in note and "backbone lenet" in note
    assert "detected from the images" in pair.description and "grey (1 channel)" in pair.protocol_note
    assert pair.load(tmp_path).target.images.shape[1:] == (1, 28, 28)


def test_colour_images_are_detected_as_rgb(folders, tmp_path):
    src, _ = folders
    colour = tmp_path / "colour"
    from torchvision.io import decode_png, write_png

    for c in SHARED:
        (colour / c).mkdir(parents=True)
        for f in sorted((src / c).glob("*.png"))[:4]:
            grey = decode_png(torchvision_read(f))
            tinted = (grey.float() * torch.tensor([1.0, 0.6, 0.2])[:, None, None]).round().to(torch.uint8)
            write_png(F.interpolate(tinted[None].float(), size=(40, 40))[0].to(torch.uint8), str(colour / c / f.name))
    with pytest.warns(FolderPairNote, match=r"colour \(3 channels\), size 40 px"):
        pair = PAIRS.get(f"folder:source={colour},target={src}")
    assert pair.channels == 3 and pair.image_size == 40 and pair.backbone == "cnn32"
    # given options are not second-guessed, and say nothing
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FolderPairNote)
        given = PAIRS.get(f"folder:source={colour},target={src},channels=3,size=32")
    assert not [w for w in caught if "detected" in str(w.message)]  # only the skipped class 7 is said
    assert (given.channels, given.image_size) == (3, 32) and "detected" not in given.description


def torchvision_read(path):
    from torchvision.io import read_file

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return read_file(str(path))


def test_short_names_for_tables():
    assert folder_label("name=mydata,source=/abs/data/photos,target=/abs/data/sketches") == "mydata"
    assert folder_label("source=/abs/data/photos,target=/abs/data/sketches") == "photos-sketches"
    assert folder_label("source=/a/x/train,target=/a/y/train,size=64") == "x/train-y/train (size=64)"
    assert PAIRS.label("folder:name=mydata,source=a,target=b") == "mydata"
    assert PAIRS.label("digits-offline") == "digits-offline"
    with pytest.raises(RegistryError, match=r"name='my data' is not a valid short name"):
        PAIRS.get("folder:name=my data,source=a,target=b")
    # two different pairs under one label keep their full names: they never merge into one column
    from dabench.analysis.results import _short_pair_names

    names = pd.Series(
        [
            "folder:name=d,source=a,target=b",
            "folder:name=d,source=a,target=c",
            "folder:name=e,source=a,target=b",
            "digits-offline",
        ]
    )
    assert list(_short_pair_names(names)) == [names[0], names[1], "e", "digits-offline"]
