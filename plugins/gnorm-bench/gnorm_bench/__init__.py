"""gnorm-bench: ``gnorm bench``, gnorm's engine timed against two reference trainers.

The command comes in through gnorm's ``gnorm_commands`` hook (:mod:`gnorm_bench.plugin`); the
benchmark itself is :mod:`gnorm_bench.bench`. This package module imports nothing heavy, so that
``gnorm --help`` stays quick.
"""
