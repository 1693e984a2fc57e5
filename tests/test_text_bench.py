"""Smoke run of ``jaxagent bench text --quick``: the result has the documented fields (no speed assertion)."""
import math

from jaxagent.bench import text


def test_quick_text_bench_reports_rates_and_ratio():
    result = text.run(quick=True)
    assert {"ours_per_s", "host_per_s", "ratio", "ours_compile_s"} <= set(result)
    assert all(math.isfinite(result[k]) for k in ("ours_per_s", "host_per_s", "ratio", "ours_compile_s")), result
    assert result["ours_per_s"] > 0 and result["host_per_s"] > 0 and result["ratio"] > 0
    assert result["ours_compile_s"] >= 0
