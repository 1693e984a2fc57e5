"""``jaxagent bench scaling --quick``: the result's shape and the plot (speed goals live in the benchmark)."""
import math

from jaxagent.bench import scaling


def test_quick_run_reports_positive_costs_and_plots_them(tmp_path):
    result = scaling.run(quick=True)
    assert result["rows"]
    for row in result["rows"]:
        assert row["history"] > 0 and row["batch"] > 0
        for key in ("ours_ms_per_step", "ours_steps_per_s", "compile_s", "host_ms_per_step", "host_steps_per_s",
                    "ratio"):
            assert math.isfinite(row[key]) and row[key] > 0, key
    path = tmp_path / "scaling.png"
    scaling.plot(result, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
