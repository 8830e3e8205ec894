"""Benchmarks of docs/benchmarks.md, each one command writing JSON, Markdown and PNG plots.

`savings` (benchmark S): AutoFLIP and its baselines against FedAvg on the same
seeds, with costs counted with and without the exploration phase.
"""
