"""The Office-31 folder loader on a small folder of real JPEGs written by the test; the missing-data
messages; the decoded cache (second load from cache, equal; a changed file is decoded again)."""

from __future__ import annotations

import os

import pytest
import torch

import dabench  # noqa: F401  (registers)
from dabench.core.domain import MissingDataError
from dabench.core.registry import PAIRS
from dabench.datasets import office31
from office31_fixture import write_office31

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torchvision.io encode_jpeg


def test_office31_pair_loads_folder_with_transductive_protocol(tmp_path) -> None:
    n = write_office31(tmp_path, domains=("amazon", "webcam"))
    d = PAIRS.get("office31-A-W").load(tmp_path)
    assert d.source.images.shape == (n, 3, 256, 256) and d.source.images.dtype == torch.uint8
    assert d.source.classes == office31.OFFICE31_CLASSES and len(office31.OFFICE31_CLASSES) == 31
    assert torch.equal(torch.bincount(d.target.labels), torch.full((31,), 2))
    assert torch.equal(d.target_adapt, d.target_eval) and len(d.target_eval) == n  # all of the target
    assert len(d.source_train) + len(d.source_val) == n
    # a 60x80 crop: shorter side → 256, centre crop; content is a photo, not blank
    assert d.source.images.float().std() > 10
    pair = PAIRS.get("office31-A-W")
    assert (pair.backbone, pair.image_size, pair.augment, pair.num_classes) == (
        "resnet50",
        224,
        "resized_crop_flip",
        31,
    )


def test_office31_group_and_glob() -> None:
    assert PAIRS.expand("office31") == [f"office31-{p}" for p in ("A-W", "D-W", "W-D", "A-D", "D-A", "W-A")]
    assert len(PAIRS.expand("office31-*")) == 6


def test_missing_office31_says_where_layout_and_how(tmp_path) -> None:
    with pytest.raises(MissingDataError) as e:
        PAIRS.get("office31-D-W").load(tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "office31" / "dslr" / "images") in msg
    assert "office31/webcam/images/<class>/*.jpg" in msg and "back_pack" in msg and "unpack" in msg


def test_office31_wrong_classes_are_named(tmp_path) -> None:
    write_office31(tmp_path, domains=("dslr",), per_class=1)
    (tmp_path / "office31" / "dslr" / "images" / "mug").rename(tmp_path / "office31" / "dslr" / "images" / "cup")
    with pytest.raises(MissingDataError, match=r"missing \['mug'\], unexpected \['cup'\]"):
        office31.load_domain(tmp_path, "dslr")


def test_decoded_cache_second_load_equal_and_invalidated(tmp_path, monkeypatch) -> None:
    write_office31(tmp_path, domains=("webcam",), per_class=1)
    first = office31.load_domain(tmp_path, "webcam")
    cache_files = list((tmp_path / "cache").glob("office31-webcam-all-256-*.pt"))
    assert len(cache_files) == 1

    real_decode = office31.decode_files
    monkeypatch.setattr(office31, "decode_files", lambda files, size=256: pytest.fail("decoded again"))
    second = office31.load_domain(tmp_path, "webcam")
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)

    # changing a source file (size/mtime) changes the key: the next load decodes afresh
    some = next((tmp_path / "office31" / "webcam" / "images" / "bike").iterdir())
    st = some.stat()
    os.utime(some, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    calls = []
    monkeypatch.setattr(office31, "decode_files", lambda files, size=256: calls.append(1) or real_decode(files, size))
    office31.load_domain(tmp_path, "webcam")
    assert calls == [1] and len(list((tmp_path / "cache").glob("office31-webcam-*.pt"))) == 2


def test_macos_litter_is_skipped_and_a_corrupt_jpeg_named(tmp_path) -> None:
    """An archive unpacked on a Mac's external disk holds ``._frame.jpg`` AppleDouble files and
    ``.DS_Store``: they stopped the load (a JPEG-suffixed non-image; a hidden folder counted as an
    unexpected class). A truly corrupt JPEG is an error naming the file (torchvision's did not)."""
    n = write_office31(tmp_path, domains=("amazon",), per_class=1, size=(20, 24))
    images = tmp_path / "office31" / "amazon" / "images"
    (images / "bike" / "._frame_0000.jpg").write_bytes(b"\x00\x05\x16\x07Mac OS X")
    (images / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (images / ".ipynb_checkpoints").mkdir()
    files, labels = office31.domain_files(tmp_path, "amazon")
    assert len(files) == n == len(labels)
    bad = images / "mug" / "frame_0000.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(RuntimeError, match=r"Office-31: cannot decode .*mug/frame_0000\.jpg.*re-extract"):
        office31.decode_files(files, size=16)
