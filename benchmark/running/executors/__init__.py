"""Executors: where the runs of a matrix execute (inline, a local process pool, Ray). One file per executor."""
