"""Benchmarks (not shipped). See bench/README.md; run ``python bench/run_mdp.py --help``."""
