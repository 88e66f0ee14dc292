"""The real-data loaders: MNIST/USPS on the published splits, CIFAR-10/STL-10 9-class mapping.

Real data comes from ``../shared/data`` (beside the clone; never copied into the repository).
Where it is absent the tests skip saying so. Writes (decoded caches, tiny dataset folders) go
to pytest's tmp_path only: the shared folder is read, never written.
"""

from __future__ import annotations

import json
import pathlib
import pickle
import re

import numpy as np
import pytest
import torch

import dabench
from dabench.core.domain import MissingDataError
from dabench.core.registry import PAIRS
from dabench.datasets import cifar_stl, digits

torch.set_num_threads(1)

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
MNIST_COUNTS = (60_000, 10_000)
USPS_COUNTS = (7_291, 2_007)


def _need(path: pathlib.Path) -> pathlib.Path:
    if not path.exists():
        pytest.skip(f"real data absent: {path} (shared/data is laid beside the clone)")
    return path


@pytest.fixture()
def tv_root(tmp_path: pathlib.Path) -> pathlib.Path:
    """A writable data root whose torchvision files are links into shared/data/torchvision."""
    src = _need(SHARED / "torchvision")
    for name in ("MNIST", "usps.bz2", "usps.t.bz2"):
        _need(src / name)
        (tmp_path / name).symlink_to(src / name)
    return tmp_path


def test_torchvision_layout_gives_published_splits_and_cache(tv_root, monkeypatch) -> None:
    for name, (n_train, n_test) in (("mnist", MNIST_COUNTS), ("usps", USPS_COUNTS)):
        d = digits.load_digits(name, tv_root)
        assert d["train"][0].shape == (n_train, 1, 28, 28) and d["train"][0].dtype == torch.uint8
        assert d["test"][0].shape == (n_test, 1, 28, 28)
        for split in ("train", "test"):
            assert torch.unique(d[split][1]).tolist() == list(range(10))
    assert len(list((tv_root / "cache").glob("usps-*.pt"))) == 2
    # Second load: from the cache, so torchvision's (slow) USPS parser must not run again.
    import torchvision.datasets as tvd

    def boom(*a, **k):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(tvd, "USPS", boom)
    again = digits.load_digits("usps", tv_root)
    assert torch.equal(again["train"][0], d["train"][0]) and torch.equal(again["test"][1], d["test"][1])


def test_npz_layout_equals_torchvision_layout(tv_root) -> None:
    npz = digits.load_digits("usps", _need(SHARED / "usps.npz").parent)
    tv = digits.load_digits("usps", tv_root)
    for split in ("train", "test"):
        assert torch.equal(npz[split][0], tv[split][0]) and torch.equal(npz[split][1], tv[split][1])


def test_mnist_usps_pairs_protocol() -> None:
    root = _need(SHARED / "mnist.npz").parent
    _need(SHARED / "usps.npz")
    d = PAIRS.get("mnist-usps").load(root)
    assert len(d.source) == 60_000 and abs(len(d.source_val) - 6_000) <= 5  # 10% per class, rounded
    assert len(d.source_train) + len(d.source_val) == 60_000
    assert len(d.target_adapt) == 7_291 and len(d.target_eval) == 2_007
    assert not set(d.target_adapt.tolist()) & set(d.target_eval.tolist())
    assert d.target.images.shape[1:] == (1, 28, 28)
    # the source-val slice is stratified: every class ~10%
    per_class = torch.bincount(d.source.labels[d.source_val], minlength=10).float()
    assert torch.allclose(per_class / torch.bincount(d.source.labels).float(), torch.full((10,), 0.1), atol=0.002)
    r = PAIRS.get("usps-mnist").load(root)
    assert len(r.source) == 7_291 and len(r.target_adapt) == 60_000 and len(r.target_eval) == 10_000
    assert int(r.target_eval.min()) == 60_000  # evaluation indexes MNIST's test images


def test_digit_pairs_learning_rate_per_direction() -> None:
    """USPS→MNIST runs at lr 0.1 and MNIST→USPS at 0.01, as TLlib's LeNet digit scripts do; the
    rest of the schedule is shared (see results/reference/mnist-usps-usps-mnist-cpu.md)."""
    m2u, u2m = PAIRS.get("mnist-usps").schedule, PAIRS.get("usps-mnist").schedule
    assert m2u.lr == 0.01 and u2m.lr == 0.1
    assert m2u.replace(lr=0.1) == u2m


def test_missing_digits_say_where_and_how(tmp_path) -> None:
    with pytest.raises(MissingDataError) as e:
        PAIRS.get("mnist-usps").load(tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "mnist.npz") in msg and "MNIST/raw/train-images-idx3-ubyte" in msg
    assert "DABENCH_DOWNLOAD=1" in msg


# ---------- malformed .npz archives: one error naming the file, the key, what is expected, the fix


def _tiny_digits(per_class: int = 6, side: int = 16) -> dict[str, np.ndarray]:
    """A valid archive in the documented format: uint8 [N, H, W] images, int64 digits 0..9."""
    g = np.random.default_rng(0)
    out = {}
    for split, k in (("train", per_class), ("test", 2)):
        y = np.repeat(np.arange(10), k)
        out[f"x_{split}"] = g.integers(0, 256, (len(y), side, side), dtype=np.uint8)
        out[f"y_{split}"] = y.astype(np.int64)
    return out


def _malformed(case: str) -> dict[str, np.ndarray]:
    z = _tiny_digits()
    if case == "missing key":
        del z["y_test"]
    elif case == "float images 0..1":
        z["x_train"] = z["x_train"].astype(np.float32) / 255
    elif case == "flat images":
        z["x_train"] = z["x_train"].reshape(len(z["x_train"]), -1)
    elif case == "channels last":
        z["x_test"] = z["x_test"][..., None]
    elif case == "labels 1..10":
        z["y_train"] = z["y_train"] + 1
    elif case == "fewer labels than images":
        z["y_test"] = z["y_test"][:-3]
    elif case == "one-hot labels":
        z["y_train"] = np.eye(10)[z["y_train"]]
    return z


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("missing key", r"has no key\(s\) y_test \(it holds x_train, y_train, x_test\)"),
        ("float images 0..1", r"'x_train' holds float32 \(60, 16, 16\) with values in \[0.0, 1.0\]; expected uint8"),
        ("flat images", r"'x_train' holds uint8 \(60, 256\); expected grey images \[N, H, W\].*reshape to"),
        ("channels last", r"'x_test' holds uint8 \(20, 16, 16, 1\), channels last; expected \[N, H, W\]"),
        ("labels 1..10", r"'y_train' holds int64 \(60,\) with labels in \[1, 10\]; expected digits 0..9 \(1-based"),
        ("fewer labels than images", r"'y_test' holds int64 \(17,\); expected 20 integer labels"),
        ("one-hot labels", r"'y_train' holds float64 \(60, 10\); expected 60 integer labels"),
    ],
)
def test_a_malformed_npz_is_one_error_naming_file_key_expectation_and_fix(tmp_path, case, says) -> None:
    """Before, float images in [0, 1] were cast to uint8 as they were (all 0 or 1: runs trained on
    black images and completed), a channels-last archive loaded as 16 channels, labels 1..10 or
    too few labels failed later naming neither file nor key, and a missing key was a bare KeyError."""
    from dabench.core.domain import DataFileError

    np.savez(tmp_path / "usps.npz", **_malformed(case))
    with pytest.raises(DataFileError, match=says) as e:
        digits.load_digits("usps", tmp_path)
    msg = str(e.value)
    assert msg.startswith(str(tmp_path / "usps.npz")) and "numpy.savez('usps.npz', x_train=" in msg
    assert "or remove it to read torchvision's layout" in msg


def test_an_npz_that_is_no_archive_is_named(tmp_path) -> None:
    from dabench.core.domain import DataFileError

    (tmp_path / "mnist.npz").write_text("not an archive")
    with pytest.raises(DataFileError, match=re.escape(f"{tmp_path / 'mnist.npz'} is not a readable numpy .npz")):
        digits.load_digits("mnist", tmp_path)
    np.save(tmp_path / "one.npy", np.zeros((3, 28, 28), np.uint8))
    (tmp_path / "one.npy").rename(tmp_path / "mnist.npz")
    with pytest.raises(DataFileError, match=re.escape("holds one array, not a .npz archive of x_train, y_train")):
        digits.load_digits("mnist", tmp_path)


def test_an_npz_in_other_lossless_forms_loads_as_the_documented_one(tmp_path) -> None:
    """[N, 1, H, W] images, integer pixels of another dtype in 0..255 and uint8 labels are the same data."""
    z = _tiny_digits()
    np.savez(tmp_path / "usps.npz", **z)
    want = digits.load_digits("usps", tmp_path)
    other = {**z, "x_train": z["x_train"][:, None].astype(np.int32), "y_train": z["y_train"].astype(np.uint8)}
    np.savez(tmp_path / "usps.npz", **other)
    got = digits.load_digits("usps", tmp_path)
    for split in ("train", "test"):
        assert got[split][0].dtype == torch.uint8 and got[split][1].dtype == torch.int64
        assert torch.equal(got[split][0], want[split][0]) and torch.equal(got[split][1], want[split][1])
    assert want["train"][0].shape == (60, 1, 28, 28)  # USPS side 16 resized to 28


def test_a_run_on_a_float_npz_fails_naming_the_file_instead_of_training_on_black_images(tmp_path) -> None:
    """End to end: the run is recorded failed with the file's name (before: complete, on images of 0s and 1s)."""
    root = tmp_path / "data"
    root.mkdir()
    np.savez(root / "mnist.npz", **_tiny_digits(side=28))
    bad = _tiny_digits()
    bad["x_train"] = bad["x_train"].astype(np.float32) / 255
    bad["x_test"] = bad["x_test"].astype(np.float32) / 255
    np.savez(root / "usps.npz", **bad)
    dabench.run(
        methods=["source-only"],
        pairs=["mnist-usps"],
        seeds=[0],
        results_dir=tmp_path / "r",
        data_root=root,
        progress=False,
        overrides={"steps": 2, "eval_every": 2, "batch_size": 8},
        device="cpu",
    )
    (rec,) = [json.loads(p.read_text()) for p in (tmp_path / "r" / "runs").glob("*.json")]
    assert rec["status"] == "failed" and rec["error"]["type"] == "DataFileError"
    assert f"{root / 'usps.npz'}: 'x_train' holds float32" in rec["error"]["message"]


def test_a_malformed_file_fails_every_run_of_its_pair_after_one_load(tmp_path, monkeypatch, capsys) -> None:
    """Like missing data, a malformed file is the pair's fault, not the run's: the first run's
    DataFileError is noted once and every other run of the pair is recorded failed with it, without
    loading (and failing on) the files again (before: each run reloaded, one note per run)."""
    root = tmp_path / "data"
    root.mkdir()
    np.savez(root / "mnist.npz", **_tiny_digits(side=28))
    bad = _tiny_digits()
    bad["x_train"] = bad["x_train"].astype(np.float32) / 255
    np.savez(root / "usps.npz", **bad)
    loads: list[str] = []
    real = digits._from_npz

    def counted(path, *args, **kwargs):
        loads.append(pathlib.Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(digits, "_from_npz", counted)
    dabench.run(
        methods=["source-only", "dann"],
        pairs=["mnist-usps"],
        seeds=[0, 1],
        results_dir=tmp_path / "r",
        data_root=root,
        progress=False,
        overrides={"steps": 2, "eval_every": 2, "batch_size": 8},
        device="cpu",
    )
    recs = [json.loads(p.read_text()) for p in (tmp_path / "r" / "runs").glob("*.json")]
    assert len(recs) == 4 and {r["status"] for r in recs} == {"failed"}
    assert {r["error"]["type"] for r in recs} == {"DataFileError"}
    assert all("'x_train' holds float32" in r["error"]["message"] for r in recs)
    assert loads.count("usps.npz") == 1, loads
    assert capsys.readouterr().err.count("pair mnist-usps: ") == 1


# ---------- CIFAR-10 / STL-10: tiny folders in torchvision's formats, written from the real subset


def _cifar_subset() -> dict[str, np.ndarray]:
    with np.load(_need(SHARED / "cifar10_subset.npz")) as z:
        return {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}


def _write_cifar(root: pathlib.Path, sub: dict[str, np.ndarray], n: int = 250) -> None:
    """torchvision's ``cifar-10-batches-py``: 5 train batches + test batch + meta (CHW rows)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def dump(name: str, x: np.ndarray, y: np.ndarray) -> None:
        rows = x.transpose(0, 3, 1, 2).reshape(len(x), -1)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rows, "labels": y.tolist()}, f)

    for i in range(5):
        dump(f"data_batch_{i + 1}", sub["x_train"][i * n : (i + 1) * n], sub["y_train"][i * n : (i + 1) * n])
    dump("test_batch", sub["x_test"][:n], sub["y_test"][:n])
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(cifar_stl.CIFAR10_CLASSES)}, f)


def _write_stl(root: pathlib.Path, sub: dict[str, np.ndarray], n: int = 120) -> dict[str, tuple]:
    """torchvision's ``stl10_binary``: column-major 3x96x96 images, 1-based labels. The images are
    real CIFAR test photos upscaled to 96 px, labelled in STL's class order."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    cifar_to_stl = {
        c: cifar_stl.STL10_CLASSES.index("car" if c == "automobile" else c)
        for c in cifar_stl.CIFAR10_CLASSES
        if c != "frog"
    }
    made = {}
    for split, offset in (("train", 0), ("test", 500)):
        x, y = sub["x_test"][offset:], sub["y_test"][offset:]
        keep = [i for i in range(len(y)) if cifar_stl.CIFAR10_CLASSES[y[i]] != "frog"][:n]
        x32 = torch.from_numpy(x[keep]).permute(0, 3, 1, 2)
        stl_y = np.array([cifar_to_stl[cifar_stl.CIFAR10_CLASSES[y[i]]] for i in keep])
        stl_y[:5] = cifar_stl.STL10_CLASSES.index("monkey")  # a few monkeys, to be dropped
        x96 = torch.nn.functional.interpolate(x32.float(), size=(96, 96), mode="nearest").to(torch.uint8)
        x96.numpy().transpose(0, 1, 3, 2).tofile(folder / f"{split}_X.bin")  # STL stores columns first
        (stl_y + 1).astype(np.uint8).tofile(folder / f"{split}_y.bin")
        made[split] = (x32, stl_y)
    return made


@pytest.fixture()
def cifar_stl_root(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    sub = _cifar_subset()
    # The tiny CIFAR folder is not the official files, so torchvision's md5 checks must be
    # bypassed. STL-10 is read without torchvision (no check to bypass, no unlabeled_X.bin).
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    _write_cifar(tmp_path, sub)
    made = _write_stl(tmp_path, sub)
    return tmp_path, sub, made


def test_cifar_9_class_mapping(cifar_stl_root) -> None:
    root, sub, _ = cifar_stl_root
    x, y = cifar_stl.load_split("cifar10", root, "train")
    orig = torch.from_numpy(sub["y_train"][:1250])
    frog = cifar_stl.CIFAR10_CLASSES.index("frog")
    assert len(y) == int((orig != frog).sum()) and x.shape[1:] == (3, 32, 32)
    assert sorted(torch.unique(y).tolist()) == list(range(9))
    # label i means SHARED_CLASSES[i]: compare names image by image
    names = [cifar_stl.CIFAR10_CLASSES[i] for i in orig.tolist() if i != frog]
    assert [cifar_stl.SHARED_CLASSES[i] for i in y.tolist()] == names
    # pixels unchanged at 32 px (HWC → CHW done right)
    kept = torch.from_numpy(sub["x_train"][:1250]).permute(0, 3, 1, 2)[orig != frog]
    assert torch.equal(x, kept)


def test_stl_mapping_orientation_and_pair(cifar_stl_root) -> None:
    root, _, made = cifar_stl_root
    x, y = cifar_stl.load_split("stl10", root, "test")
    x32, stl_y = made["test"]
    keep = torch.from_numpy(stl_y != cifar_stl.STL10_CLASSES.index("monkey"))
    assert len(y) == int(keep.sum()) == 115
    want = [
        cifar_stl.SHARED_CLASSES.index(
            "automobile" if cifar_stl.STL10_CLASSES[i] == "car" else cifar_stl.STL10_CLASSES[i]
        )
        for i in stl_y[keep.numpy()]
    ]
    assert y.tolist() == want
    # 96 px → 32 px gives back the photo, upright (a transposed image would differ a lot)
    err = (x.float() - x32[keep].float()).abs().mean()
    err_transposed = (x.float() - x32[keep].transpose(2, 3).float()).abs().mean()
    assert err < 5.0 and err < err_transposed / 3, (err, err_transposed)
    d = PAIRS.get("cifar10-stl10").load(root)
    assert d.source.classes == d.target.classes == cifar_stl.SHARED_CLASSES
    assert len(d.target_adapt) == 115 and len(d.target_eval) == 115
    assert abs(len(d.source_val) - len(d.source) * 0.1) <= 5 and len(d.source_train) + len(d.source_val) == len(
        d.source
    )
    r = PAIRS.get("stl10-cifar10").load(root)
    assert len(r.source) == 115 and len(r.target_eval) == len(torch.unique(r.target_eval))


def test_stl_loads_from_the_four_files_it_names_and_refuses_a_truncated_one(cifar_stl_root) -> None:
    """torchvision's STL10 refused a folder without the unused 2.6 GB unlabeled_X.bin (its md5
    check covers every file), and the loader then said the four files it lists were missing."""
    root, _, _ = cifar_stl_root
    assert sorted(p.name for p in (root / "stl10_binary").iterdir()) == [
        "test_X.bin",
        "test_y.bin",
        "train_X.bin",
        "train_y.bin",
    ]
    d = PAIRS.get("stl10-cifar10").load(root)
    assert len(d.source) == 115 and d.source.images.shape[1:] == (3, 32, 32)
    x = root / "stl10_binary" / "train_X.bin"
    x.write_bytes(x.read_bytes()[: 3 * 96 * 96 * 7])
    with pytest.raises(ValueError, match=r"train_X.bin holds .*\(7 images .*train_y.bin holds 120 labels"):
        cifar_stl.read_stl_binary(root, "train")


def test_missing_cifar_says_where_and_how(tmp_path) -> None:
    with pytest.raises(MissingDataError, match="cifar-10-batches-py/data_batch_1") as e:
        PAIRS.get("cifar10-stl10").load(tmp_path)
    assert "DABENCH_DOWNLOAD=1" in str(e.value)


def test_a_damaged_cifar_file_is_named_not_called_missing(tmp_path) -> None:
    """Every file there, one damaged: before, the error said CIFAR-10 was "not found" and listed
    the files, all present; now it names the file that fails torchvision's MD5 check and the fix."""
    from dabench.core.domain import DataFileError

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (folder / name).write_bytes(b"truncated copy")
    with pytest.raises(DataFileError) as e:
        cifar_stl.load_split("cifar10", tmp_path, "train")
    msg = str(e.value)
    assert "not found" not in msg and "7 file(s)" in msg
    assert f"{folder / 'data_batch_1'} (MD5 expected c99cafc152244af753f735de768cd75f)" in msg
    assert "re-extract" in msg and "DABENCH_DOWNLOAD=1" in msg
