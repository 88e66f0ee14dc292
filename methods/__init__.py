"""Built-in methods, one file each; importing this package registers them."""
from . import coral, dan, dann, fine_tune, linear_probe, source_only  # noqa: F401
