"""Built-in methods, one file each; importing this package registers them.

The group ``zoo`` (``--methods zoo``) names every built-in method; ``all``, ``uda`` and
``few-shot`` (every registered method, plugins included, or those of one protocol) are
registered with the registry itself (``dabench.core.registry``).
"""

from dabench import METHODS

from . import adda, afn, bnm, cdan, coral, dan, dann, fine_tune, jan, linear_probe, mcd, mdd, minent, source_only  # noqa: F401

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
)
METHODS.register_group("zoo", BUILTIN_METHODS)
