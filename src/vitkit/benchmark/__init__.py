"""`vitkit bench`: latency, throughput, size, memory and accuracy of every variant of a bundle.

Named benchmark, not bench, so that it is not mistaken for the repository's `bench/` folder of
benchmark scripts (which import its timing helpers).
"""

from __future__ import annotations

from vitkit.benchmark.run import BenchConfig, BenchResult, VariantResult, measure_variant, run_bench
from vitkit.benchmark.timing import QUICK, Budget

__all__ = ["QUICK", "BenchConfig", "BenchResult", "Budget", "VariantResult", "measure_variant",
           "run_bench"]
