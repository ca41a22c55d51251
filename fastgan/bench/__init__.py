"""Training-throughput benchmark: fastgan against eager PyTorch and torch.compile, same run.

>>> from fastgan.bench import BenchConfig, run_bench, format_table
>>> result = run_bench(BenchConfig.matrix(["dcgan"], [32], [64]))
>>> print(format_table(result))

``fastgan bench`` is the command-line face; :mod:`fastgan.bench.baselines` holds the baselines
written the way users write them; :func:`fastgan.bench.report.markdown_table` renders a saved
JSON for the README.
"""
from fastgan.bench.harness import ALL_MODES, BenchConfig, Case, default_settings, run_bench
from fastgan.bench.report import format_table, markdown_table, write_outputs

__all__ = ["ALL_MODES", "BenchConfig", "Case", "default_settings", "format_table", "markdown_table",
           "run_bench", "write_outputs"]
