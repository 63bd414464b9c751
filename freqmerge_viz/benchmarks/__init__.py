"""Benchmarks, one module each, run as ``freqmerge-viz bench NAME [options]``.

Every module has ``run(**options) -> dict`` (the measurements) and ``main(argv=None)``, which
parses options with argparse and prints ``run``'s result as JSON. ``--quick`` shrinks a
benchmark to a size that tests can afford. Timings are the best of a few repeats.
"""
