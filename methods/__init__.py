"""Built-in methods, one file each; importing this package registers them.

The group ``zoo`` (``--methods zoo``) names every built-in method; ``all``, ``uda``,
``few-shot`` and ``source-free`` (every registered method, plugins included, or those of one
protocol) are registered with the registry itself (``dabench.core.registry``).
"""

from dabench import METHODS

from . import adda, afn, bnm, cdan, coral, dan, dann, fine_tune, jan, linear_probe, mcd, mdd, minent, shot, source_only  # noqa: F401

#: every built-in method, in the order tables list them: baseline, the mission's methods, the zoo
BUILTIN_METHODS = (
    "source-only",
    "dan",
    "dann",
    "coral",
    "linear-probe",
    "fine-tune",
    "minent",
    "bnm",
    "afn",
    "jan",
    "cdan",
    "cdan-e",
    "mdd",
    "mcd",
    "adda",
    "shot",
)
METHODS.register_group("zoo", BUILTIN_METHODS)
