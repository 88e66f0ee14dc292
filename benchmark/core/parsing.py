"""Reading values given as text (``--set``, backbone options, environment variables): one rule each.

Standard library only (imported by core, backbones, datasets and the analysis side alike).
"""

from __future__ import annotations

from typing import Any

#: the words read as true / false (case and surrounding blanks ignored)
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def parse_bool(value: Any, where: str) -> bool:
    """``value`` as a boolean: a bool, the integer 0/1, or one of :data:`TRUE_WORDS` /
    :data:`FALSE_WORDS`. Anything else (``"ture"``, ``2``) is a ``ValueError`` naming ``where``,
    the value and the valid words, never a silent ``False``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    raise ValueError(f"{where}: expected a boolean ({'/'.join(TRUE_WORDS)} or {'/'.join(FALSE_WORDS)}), got {value!r}")


__all__ = ["parse_bool", "TRUE_WORDS", "FALSE_WORDS"]
