"""The one way dabench writes and reads its JSON files: standard JSON (RFC 8259), non-finite
numbers included (docs/architecture.md, "The run record", *Non-finite numbers*).

Python's ``json`` writes NaN and ±infinity as the bare words ``NaN``, ``Infinity`` and
``-Infinity``, which are not JSON: jq, JavaScript's ``JSON.parse``, Go's ``encoding/json`` and
other strict parsers refuse the whole file, so a user's tooling failed on exactly the records of
the runs that went wrong. :func:`dump_json` writes each non-finite float as a string instead:

==============  =============
float           JSON
==============  =============
``nan``         ``"NaN"``
``inf``         ``"Infinity"``
``-inf``        ``"-Infinity"``
==============  =============

Strings, not ``null``: in dabench's files ``null`` already means "not measured / not applicable"
(a class without evaluation images, a running record's ``final``), while NaN says "computed, and
undefined" and ±infinity says which way it overflowed; the three are different facts of a
divergence and stay apart. They are the spellings Python wrote bare (an old file and a new one
differ only by the quotes), and ``float()`` in Python, ``Number()`` in JavaScript, Go's
``strconv.ParseFloat`` and ``pandas.to_numeric`` all read them back as the number.

:func:`load_json` reads both forms, old bare words and new strings, to the same floats, so old
results folders load, resume and report as before and a value reads back as it was written (a
spec's hyperparameter ``inf`` keeps its run id). The price: these three exact spellings are
reserved; a string value spelled exactly ``NaN``, ``Infinity`` or ``-Infinity`` (nothing dabench
itself writes as text) reads back as the float; the matrix refuses such a setting.

Standard library only: records are read without torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

#: how :func:`dump_json` writes each non-finite float (and :func:`load_json` reads it back)
NAN, POS_INF, NEG_INF = "NaN", "Infinity", "-Infinity"
_DECODE: dict[str, float] = {NAN: math.nan, POS_INF: math.inf, NEG_INF: -math.inf}
#: the string values that cannot be stored as strings (they read back as floats; the matrix refuses them)
RESERVED_STRINGS = tuple(_DECODE)


def _encode_float(x: float) -> float | str:
    if math.isfinite(x):
        return x
    return NAN if math.isnan(x) else (POS_INF if x > 0 else NEG_INF)


def to_standard(obj: Any) -> Any:
    """``obj`` with every non-finite float (at any depth of dicts, lists and tuples) replaced by
    its string form; everything else as it is (keys too: JSON keys are strings already)."""
    if isinstance(obj, float):  # np.float64 too (a float subclass)
        return _encode_float(obj)
    if isinstance(obj, dict):
        return {k: to_standard(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_standard(v) for v in obj]
    return obj


def from_standard(obj: Any) -> Any:
    """The inverse of :func:`to_standard`: the strings ``"NaN"``, ``"Infinity"``,
    ``"-Infinity"`` (as values, at any depth) back to floats."""
    if isinstance(obj, str):
        return _DECODE.get(obj, obj)
    if isinstance(obj, dict):
        return {k: from_standard(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_standard(v) for v in obj]
    return obj


def dump_json(
    obj: Any,
    *,
    indent: int | None = None,
    default: Callable[[Any], Any] | None = None,
    sort_keys: bool = False,
    ensure_ascii: bool = True,
    separators: tuple[str, str] | None = None,
) -> str:
    """``json.dumps`` that always writes standard JSON: non-finite floats as the strings of the
    module's table, ``allow_nan=False`` as the guard (a non-finite float that still got through
    raises ``ValueError`` instead of writing a file strict parsers refuse). ``default``'s results
    are mapped the same way."""
    hook = None if default is None else (lambda o: to_standard(default(o)))
    return json.dumps(
        to_standard(obj),
        indent=indent,
        default=hook,
        sort_keys=sort_keys,
        ensure_ascii=ensure_ascii,
        separators=separators,
        allow_nan=False,
    )


def load_json(text: str | bytes) -> Any:
    """``json.loads`` of a file dabench wrote, in either form: the bare ``NaN``/``Infinity``/
    ``-Infinity`` of older dabench and the strings :func:`dump_json` writes read as the same
    floats. Raises ``json.JSONDecodeError`` (a ``ValueError``) for text that is not JSON and
    ``UnicodeDecodeError`` for bytes that are not UTF-8, as ``json.loads`` does."""
    return from_standard(json.loads(text))


__all__ = ["NAN", "POS_INF", "NEG_INF", "dump_json", "load_json", "to_standard", "from_standard"]
