"""Dataset families; each module registers its domains' pairs on import."""
from . import digits_offline  # noqa: F401
