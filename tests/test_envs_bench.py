"""`jaxagent bench envs` runs (small sizes) and reports both tasks beside their peers."""
import json
import math
import subprocess
import sys


def test_bench_envs_quick(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "jaxagent.cli", "bench", "envs", "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    for task, peer in (("bandit", "gymnax"), ("tictactoe", "pgx")):
        r = data[task]
        assert peer in r["peer"]
        for k in ("ours_steps_per_s", "peer_steps_per_s", "ratio", "ours_compile_s", "peer_compile_s"):
            assert math.isfinite(r[k]) and (r[k] >= 0 if k.endswith("compile_s") else r[k] > 0), (task, k, r[k])
    assert "ratio" in proc.stdout
