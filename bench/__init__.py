"""Benchmarks of annexd against git-annex."""
