"""The contract plugins implement and the spec of a run: registries, Method, DomainPair, RunSpec, the results store."""
