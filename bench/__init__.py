"""Benchmarks (not tests): `python -m bench NAME [--quick]`, `python -m bench all`. See BENCHMARKS.md.

Each benchmark is a module here with `run(quick: bool) -> dict`; it prints a readable table, and the
dispatcher prints its figures as one JSON object (`{"bench": NAME, ...}`) on the very last line.
"""
