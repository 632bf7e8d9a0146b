"""Benchmarks for issue 5: each prints a table of ratios measured side by side in one run."""
