"""The engine: trains and evaluates one run (the training loop, device-resident data, evaluation, compilation)."""
