"""Benchmarks that reproduce published results with camkit (not part of the installed package)."""
