"""Latency, throughput, size, memory and accuracy of every variant of a bundle."""

from __future__ import annotations

from vitkit.bench.run import BenchConfig, BenchResult, VariantResult, measure_variant, run_bench
from vitkit.bench.timing import QUICK, Budget

__all__ = ["QUICK", "BenchConfig", "BenchResult", "Budget", "VariantResult", "measure_variant",
           "run_bench"]
