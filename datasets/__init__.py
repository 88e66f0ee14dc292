"""Dataset families; each module registers its domains' pairs on import."""

from . import digits_offline  # noqa: F401
from . import digits, cifar_stl, office31  # noqa: F401  (mnist-usps, cifar10-stl10, office31-*)
from . import folder  # noqa: F401  (folder:source=DIR,target=DIR: your own image folders)
