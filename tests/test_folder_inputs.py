"""What a researcher's own image folders hold besides clean class folders of JPEGs, on real files
written with Pillow: macOS litter, nested folders, BMP/WebP/16-bit/palette images, a truncated JPEG,
class names that differ in case, classes or files left out. Each must load right or be said."""

from __future__ import annotations

import pathlib
import warnings

import numpy as np
import pytest
from PIL import Image, ImageDraw

from dabench import PAIRS, RegistryError
from dabench.datasets.folder import FolderPairNote
from dabench.testing import isolated_registries

CLASSES = ("circle", "square")


@pytest.fixture(autouse=True)
def _isolated():
    with isolated_registries():
        yield


def _shape(c: str, i: int, bg: tuple[int, int, int]) -> Image.Image:
    im = Image.new("RGB", (16, 16), bg)
    d = ImageDraw.Draw(im)
    box = [2 + i % 3, 2 + i % 2, 12, 12]
    (d.ellipse if c == "circle" else d.rectangle)(box, fill=(220, 30, 30))
    return im


def _domain(root: pathlib.Path, bg: tuple[int, int, int], n: int = 4) -> pathlib.Path:
    for c in CLASSES:
        (root / c).mkdir(parents=True)
        for i in range(n):
            _shape(c, i, bg).save(root / c / f"{i}.jpg", quality=95)
    return root


def _pair(src: pathlib.Path, tgt: pathlib.Path, extra: str = ",size=16,channels=3"):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FolderPairNote)
        pair = PAIRS.get(f"folder:source={src},target={tgt}{extra}")
    return pair, [str(w.message) for w in caught if issubclass(w.category, FolderPairNote)]


def _load(pair, data_root: pathlib.Path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FolderPairNote)
        data = pair.load(data_root)
    return data, [str(w.message) for w in caught if issubclass(w.category, FolderPairNote)]


def test_macos_litter_nested_folders_and_other_formats_load(tmp_path):
    """``._x.jpg`` (AppleDouble) and ``.DS_Store`` are not images: they stopped the whole load.
    Images in sub-folders count (as torchvision's ImageFolder), BMP/WebP decode (BMP was listed
    but torchvision cannot read it), 16-bit PNGs are scaled to 8 bits (they wrapped round mod 256)
    and palette PNGs keep their colours."""
    src, tgt = _domain(tmp_path / "src", (255, 255, 255)), _domain(tmp_path / "tgt", (90, 90, 90))
    (src / "circle" / "._0.jpg").write_bytes(b"\x00\x05\x16\x07Mac OS X resource fork")
    (src / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (src / "circle" / "batch2").mkdir()
    _shape("circle", 5, (255, 255, 255)).save(src / "circle" / "batch2" / "5.bmp")
    _shape("circle", 6, (255, 255, 255)).save(src / "circle" / "batch2" / "6.webp")
    Image.fromarray(np.full((16, 16), 51200, dtype=np.uint16)).save(src / "square" / "deep.png")
    pal = Image.new("P", (16, 16), 0)
    pal.putpalette([200, 10, 10] + [0] * 765)
    pal.save(src / "square" / "pal.png")
    data, _ = _load(_pair(src, tgt)[0], tmp_path / "data")
    assert data.source.images.shape[0] == 4 + 2 + 4 + 2  # the hidden files are no images, the nested ones are
    square = data.source.images[data.source.labels == 1]  # sorted by relative path: 0..3.jpg, deep.png, pal.png
    assert square[4].unique().tolist() == [199]  # 51200/65535*255; stored as it was: 51200 % 256 = 0
    assert square[5][:, 0, 0].tolist() == [200, 10, 10]


def test_palette_colour_images_are_detected_as_colour(tmp_path):
    """Detection read images unchanged: a palette PNG is then its indices, one channel, and a
    folder of colour palette images was taken for grey and decoded grey."""
    for d in ("src", "tgt"):
        for c, colour in zip(CLASSES, ([200, 10, 10], [10, 10, 200]), strict=True):
            (tmp_path / d / c).mkdir(parents=True)
            for i in range(3):
                im = Image.new("P", (16, 16), 0)
                im.putpalette(colour + [255, 255, 255] + [0] * 762)
                ImageDraw.Draw(im).rectangle([2 + i, 2, 10, 10], fill=1)
                im.save(tmp_path / d / c / f"{i}.png")
    pair, notes = _pair(tmp_path / "src", tmp_path / "tgt", "")
    assert pair.channels == 3, notes


def test_undecodable_files_are_skipped_and_named_with_a_count(tmp_path):
    """A truncated JPEG stopped every run of the pair; it is left out, named, with the count, on
    every load (the cache keeps which files they were)."""
    src, tgt = _domain(tmp_path / "src", (255, 255, 255)), _domain(tmp_path / "tgt", (90, 90, 90))
    whole = (src / "circle" / "1.jpg").read_bytes()
    (src / "circle" / "1.jpg").write_bytes(whole[: len(whole) // 2])
    pair, _ = _pair(src, tgt)
    for _ in range(2):  # decoded, then read from the cache
        data, notes = _load(pair, tmp_path / "data")
        assert data.source.images.shape[0] == 7 and data.source.labels.tolist() == [0, 0, 0, 1, 1, 1, 1]
        assert any("skipped 1 of 8 files" in n and "circle/1.jpg" in n for n in notes), notes


def test_class_names_differing_in_case_or_spaces_are_refused(tmp_path):
    """``Circle`` vs ``circle`` and ``square `` vs ``square`` were both dropped as one-domain
    classes (a silently smaller task); refused, naming the folders and the fix."""
    src, tgt = _domain(tmp_path / "src", (255, 255, 255)), _domain(tmp_path / "tgt", (90, 90, 90))
    (src / "circle").rename(src / "Circle")
    (tgt / "square").rename(tgt / "square ")
    (src / "triangle").mkdir()
    _shape("circle", 0, (255, 255, 255)).save(src / "triangle" / "0.jpg")
    (tgt / "triangle").mkdir()
    _shape("circle", 0, (90, 90, 90)).save(tgt / "triangle" / "0.jpg")
    with pytest.raises(
        RegistryError, match=r"differ only in case or spaces.*src/Circle/ vs target .*tgt/circle/.*rename"
    ):
        _pair(src, tgt)


def test_classes_and_files_left_out_are_said(tmp_path):
    """A class of one domain only, an empty class folder and non-image files: each named in a
    warning at once (before: only in the pair description, and not at all for files)."""
    src, tgt = _domain(tmp_path / "src", (255, 255, 255)), _domain(tmp_path / "tgt", (90, 90, 90))
    (src / "extra").mkdir()
    _shape("circle", 0, (255, 255, 255)).save(src / "extra" / "0.jpg")
    (tgt / "empty").mkdir()
    (src / "empty").mkdir()
    _shape("circle", 0, (255, 255, 255)).save(src / "empty" / "0.jpg")
    (tgt / "square" / "labels.csv").write_text("x")
    pair, notes = _pair(src, tgt)
    said = " ".join(notes)
    assert f"classes only in {src} skipped: extra" in said
    assert f"class folders without images in {tgt} (class skipped): empty" in said
    assert f"1 files under {tgt} ignored" in said and "square/labels.csv" in said
    assert "labels.csv" in pair.protocol_note


def test_relative_paths_become_absolute_in_the_run_name(tmp_path, monkeypatch):
    """A relative ``source=``/``target=`` meant another folder in every directory the command ran
    from, under one run id: a second run elsewhere found the first one's runs complete. The
    matrix uses the absolute spelling (absolute names are kept as given)."""
    for d in ("a", "b"):
        _domain(tmp_path / d / "src", (255, 255, 255), n=2)
        _domain(tmp_path / d / "tgt", (90, 90, 90), n=2)
    name = "folder:source=src,target=tgt,size=16,channels=3"
    expanded = []
    for d in ("a", "b"):
        monkeypatch.chdir(tmp_path / d)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FolderPairNote)
            expanded += PAIRS.expand([name])
    assert expanded == [
        f"folder:source={tmp_path / d / 'src'},target={tmp_path / d / 'tgt'},size=16,channels=3" for d in ("a", "b")
    ]
    assert expanded[1] in PAIRS  # registered under it: the run's lookups need no second build
    absolute = f"folder:source={tmp_path / 'a' / 'src'},target={tmp_path / 'a' / 'tgt'}, size=16,channels=3"
    assert PAIRS.expand([absolute]) == [absolute]  # unchanged: existing run ids stay


def test_a_comma_in_a_path_is_explained(tmp_path):
    with pytest.raises(RegistryError, match=r"a comma inside a path is not supported.*ln -s '/data/photos,2024/src'"):
        PAIRS.get("folder:source=/data/photos,2024/src,target=/data/t")


def test_a_label_budget_undercut_by_an_undecodable_file_names_the_file(tmp_path):
    """The pair's largest label budget is counted from the files (no decoding when the pair is
    named); a target file that then cannot be decoded leaves its class one image short, and every
    run failed with "must be an integer from 0 to 1" and no word of why. The refusal now names the
    file, and the record's data says what the loader left out."""
    from dabench.core.domain import check_target_shots
    from dabench.engine.train import data_summary

    src, tgt = _domain(tmp_path / "src", (255, 255, 255)), _domain(tmp_path / "tgt", (90, 90, 90))
    whole = (tgt / "square" / "2.jpg").read_bytes()
    (tgt / "square" / "2.jpg").write_bytes(whole[: len(whole) // 2])
    pair, _ = _pair(src, tgt)
    assert pair.target_shots == 2  # 4 files a class, half of them for adaptation
    data, _ = _load(pair, tmp_path / "data")
    with pytest.raises(ValueError, match=r"from 0 to 1 .*skipped 1 of 8 files under .*tgt.*square/2\.jpg"):
        check_target_shots(pair, data, pair.target_shots)
    check_target_shots(pair, data, 1)  # what the decoded split holds
    assert any("square/2.jpg" in n for n in data_summary(pair, data)["loader_notes"])
    clean, _ = _load(_pair(src, src)[0], tmp_path / "data")
    assert "loader_notes" not in data_summary(pair, clean)  # nothing left out: records as before
