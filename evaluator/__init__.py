"""Trusted evaluation: datasets, training recipe (also run in the sandbox), metrics, dynamics, plots."""
