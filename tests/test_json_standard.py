"""Every JSON file dabench writes is standard JSON (RFC 8259), non-finite numbers included, and
dabench reads the older files with bare ``NaN``/``Infinity`` as it reads the new ones
(core/jsonio.py; docs/architecture.md, "The run record", *Non-finite numbers*)."""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import textwrap
import warnings
from typing import Any

import pytest

from dabench.api import leaderboard, load_results
from dabench.core.jsonio import dump_json, load_json
from dabench.core.spec import RunSpec
from dabench.core.store import RunStore
from dabench.running.executors import ExecutorOptions
from dabench.running.matrix import Matrix, expand
from dabench.running.scheduler import run_matrix, write_matrix_file
from tiny_runs import TINY


def strict_loads(text: str) -> Any:
    """What jq, ``JSON.parse`` and Go accept: no bare NaN/Infinity/-Infinity."""

    def refuse(word: str) -> Any:
        raise ValueError(f"not standard JSON: bare {word}")

    return json.loads(text, parse_constant=refuse)


def old_form(text: str) -> str:
    """The same file as dabench wrote it before (Python's defaults: bare NaN/Infinity)."""
    return json.dumps(load_json(text), indent=1)


# --- the helper ------------------------------------------------------------------------------


def test_each_non_finite_float_has_its_own_string_and_reads_back():
    value = {"a": math.nan, "b": [math.inf, -math.inf, 1.5, None, "text"], "c": (2.0, {"d": -math.inf})}
    text = dump_json(value, indent=1)
    assert strict_loads(text) == {
        "a": "NaN",
        "b": ["Infinity", "-Infinity", 1.5, None, "text"],
        "c": [2.0, {"d": "-Infinity"}],
    }
    back = load_json(text)
    assert math.isnan(back["a"]) and back["b"][:2] == [math.inf, -math.inf] and back["c"][1]["d"] == -math.inf
    assert back["b"][2:] == [1.5, None, "text"]
    # a file of older dabench (bare words) reads as the same values
    old = json.dumps(value)
    assert "NaN" in old and "Infinity" in old
    old_back = load_json(old.encode())
    assert math.isnan(old_back["a"]) and old_back["b"] == back["b"] and old_back["c"] == back["c"]


def test_default_results_are_mapped_too_and_nothing_non_finite_gets_through():
    class Odd:
        pass

    assert strict_loads(dump_json({"x": Odd()}, default=lambda o: math.inf)) == {"x": "Infinity"}
    with pytest.raises(TypeError):  # as json.dumps: an object without a default is refused
        dump_json({"x": Odd()})


def test_a_spec_with_an_infinite_hyperparameter_keeps_its_run_id_through_a_file():
    """matrix.json and records hold specs; status and the report re-derive run ids from them.
    (The built-ins refuse non-finite hyperparameters; a plugin's own spec field may hold one.)"""
    base = expand(Matrix(methods=("dann",), seeds=(0,)))[0]
    spec = dataclasses.replace(base, hparams={**base.hparams, "trade_off": math.inf})
    text = dump_json(spec.to_dict())
    assert strict_loads(text)["hparams"]["trade_off"] == "Infinity"
    assert RunSpec.from_dict(load_json(text)).run_id == spec.run_id


# --- real runs -------------------------------------------------------------------------------

#: a source-only model whose evaluation logits put +inf on class 0: its training loss stays
#: finite (the run completes) but softmax is NaN, so entropy, IM and SND of every evaluation are
#: NaN: the record has non-finite numbers in its curve and final point
INF_LOGITS = textwrap.dedent('''
    import torch
    from dabench import register_method
    from dabench.methods.source_only import SourceOnly

    @register_method("inf-logits")
    class InfLogits(SourceOnly):
        """Source-only whose predictions overflow: +inf logit for class 0."""
        def predict(self, x):
            logits = super().predict(x).clone()
            logits[:, 0] = float("inf")
            return logits
''')


def _reports(out: pathlib.Path) -> dict[str, str]:
    """The leaderboard Markdown under the rules that read the non-finite scores."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no usable score": the same warning both times
        df = load_results(out)
        return {rule: leaderboard(df, rule=rule).to_markdown() for rule in ("last", "entropy", "im", "snd")}


def _records(out: pathlib.Path) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted((out / "runs").glob("*.json"))}


def _rewrite_old(out: pathlib.Path) -> None:
    for p in [*(out / "runs").glob("*.json"), out / "matrix.json"]:
        p.write_text(old_form(p.read_text(encoding="utf-8")), encoding="utf-8")


def test_a_run_with_nan_scores_writes_standard_json_and_old_records_read_the_same(
    tmp_path, restore_registries, one_thread
):
    plugin = tmp_path / "inf_logits.py"
    plugin.write_text(INF_LOGITS, encoding="utf-8")
    plugins = (TINY, str(plugin))
    specs = expand(
        Matrix(
            methods=("inf-logits", "source-only"),
            pairs=("tiny",),
            seeds=(0,),
            plugins=plugins,
            overrides={"steps": 20, "eval_every": 10},
        )
    )
    out = tmp_path / "out"
    write_matrix_file(out, specs, plugins=plugins, executor="inline", workers=1)  # as dabench run does
    summary = run_matrix(specs, out, ExecutorOptions(device="cpu", progress=False, plugins=plugins))
    assert {r.status.value for r in summary.ran} == {"complete"}
    texts = _records(out)
    for text in [*texts.values(), (out / "matrix.json").read_text(encoding="utf-8")]:
        strict_loads(text)  # the old code wrote bare NaN here
    inf_id = next(s.run_id for s in specs if s.method == "inf-logits")
    raw = strict_loads(texts[f"{inf_id}.json"])
    assert [p["entropy"] for p in raw["curve"]] == ["NaN", "NaN"] and raw["final"]["snd"] == "NaN"
    assert math.isfinite(raw["final"]["target_acc"])
    rec = RunStore(out).read(inf_id)
    assert all(math.isnan(p[k]) for p in rec.curve for k in ("entropy", "im", "snd"))
    new_reports = _reports(out)
    assert "inf-logits" in new_reports["last"]

    # the same folder as older dabench wrote it: bare NaN, which strict parsers refuse
    _rewrite_old(out)
    old_texts = _records(out)
    with pytest.raises(ValueError, match="bare NaN"):
        strict_loads(old_texts[f"{inf_id}.json"])
    assert RunStore(out).read(inf_id).to_json() == rec.to_json() == texts[f"{inf_id}.json"]
    assert _reports(out) == new_reports
    # and it resumes as before: both runs complete, nothing rerun
    again = run_matrix(specs, out, ExecutorOptions(device="cpu", progress=False, plugins=plugins))
    assert again.ran == [] and len(again.skipped_complete) == 2


def test_a_diverged_run_writes_standard_json_and_reports_the_same_in_both_forms(
    tmp_path, restore_registries, one_thread
):
    """lr=1e6 diverges source-only on the tiny pair within a few steps (as in test_executors)."""
    specs = expand(
        Matrix(
            methods=("source-only",),
            pairs=("tiny",),
            seeds=(0,),
            plugins=(TINY,),
            overrides={"steps": 20, "eval_every": 10, "lr": 1e6},
        )
    )
    out = tmp_path / "out"
    write_matrix_file(out, specs, plugins=(TINY,), executor="inline", workers=1, sweep={"lr": [1e6]})
    summary = run_matrix(specs, out, ExecutorOptions(device="cpu", progress=False, plugins=(TINY,)))
    (rec,) = summary.ran
    assert rec.status.value == "diverged" and rec.diverged_at_step is not None
    text = (out / "runs" / f"{rec.run_id}.json").read_text(encoding="utf-8")
    assert strict_loads(text)["status"] == "diverged"
    strict_loads((out / "matrix.json").read_text(encoding="utf-8"))
    before = _reports(out)
    assert "| diverged |" in before["last"]
    _rewrite_old(out)
    assert _reports(out) == before


STRING_HPARAM = textwrap.dedent('''
    from dabench import register_method
    from dabench.methods.source_only import SourceOnly

    @register_method("string-hp")
    class StringHp(SourceOnly):
        """Source-only with a string hyperparameter."""
        defaults = {"mode": "plain"}
''')


def test_a_string_setting_spelled_as_a_non_finite_number_is_refused(tmp_path, restore_registries) -> None:
    """'NaN', 'Infinity' and '-Infinity' are how records store non-finite floats: a string setting
    spelled so would read back as the float and change the run's spec and id between writing and
    reading. The matrix refuses it, naming the key; any other string is kept."""
    from dabench.running.matrix import MatrixError

    plugin = tmp_path / "string_hp.py"
    plugin.write_text(STRING_HPARAM, encoding="utf-8")

    def specs(mode: str) -> list[RunSpec]:
        return expand(Matrix(methods=("string-hp",), seeds=(0,), plugins=(str(plugin),), overrides={"mode": mode}))

    (spec,) = specs("nan-ish")
    assert load_json(dump_json(spec.to_dict()))["hparams"]["mode"] == "nan-ish"
    for reserved in ("NaN", "Infinity", "-Infinity"):
        with pytest.raises(MatrixError, match=f"--set mode='{reserved}': the string '{reserved}' is reserved"):
            specs(reserved)
