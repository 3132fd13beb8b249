"""The test suite (a package, so that ``tests.factories`` is this folder even where an installed
distribution such as dcase_util ships a top-level ``tests`` package)."""
