"""Benchmarks: python -m bench runs them all in a quick mode."""
