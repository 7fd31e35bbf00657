"""Benchmarks: tools run from the checkout (``python -m benchmarks.NAME ...``), not library code.

One module per benchmark; ``record`` holds what they share (fresh-process measurements, the
machine's description, the sections of ``docs/benchmarks.md``). Timings live here, never in tests:
every table states its machine and the command that reproduces it, and compares rows measured side
by side in one run.
"""
