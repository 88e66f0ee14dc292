"""Speed measurements: ``dabench bench`` (images/s per method) and ``python -m dabench.speed.gpu_pack``."""
