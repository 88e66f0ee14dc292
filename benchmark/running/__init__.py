"""Running a matrix: expanding it to specs, scheduling them, the unit of work, the executors, status."""
