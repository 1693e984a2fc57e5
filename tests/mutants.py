"""Sampled mutation testing: inject one small bug at a time into a source file and check that its tests fail.

    python tests/mutants.py [--source DIR] [--target FILE]... [--tests TEST...] [--per-file 50] [--seed 0]
                            [--limit N] [--timeout 300] [--cache /tmp/mutants_jax_cache] [--json PATH]

The source tree (git-tracked and untracked non-ignored files) is copied once into a scratch directory. Each mutant
is the target file's ``ast.unparse`` with one node changed; it is written into the copy, the target's tests run there
in a fresh pytest process (PYTHONPATH on the copy, so its packages are the ones imported) and the file is restored.
A sanity run first checks that the unmutated unparse of every target passes and that the copy's jaxagent is imported.
A timeout counts as a kill but is reported apart. Not collected by pytest; run by ``make mutants``.
"""
import argparse
import ast
import copy
import difflib
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = {
    "jaxagent/rollout.py": ["tests/test_episode.py", "tests/test_rollout.py"],
    "jaxagent/trainers/rlft.py": ["tests/test_objectives.py", "tests/test_rlft_sharded.py", "tests/test_trainers.py"],
    "jaxagent/trainers/sft.py": ["tests/test_objectives.py", "tests/test_rollout.py", "tests/test_trainers.py"],
    "jaxagent/packing.py": ["tests/test_packing.py", "tests/test_objectives.py", "tests/test_rlft_sharded.py"],
    "jaxagent/trainers/setup.py": ["tests/test_experiment_config.py", "tests/test_episode.py", "tests/test_trainers.py"],
}
FLIP = {ast.Lt: ast.GtE, ast.GtE: ast.Lt, ast.Gt: ast.LtE, ast.LtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq,
        ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Mult,
        ast.BitOr: ast.BitAnd, ast.BitAnd: ast.BitOr}
OUTCOME = {"failed": "killed", "timeout": "timeout", "passed": "survived"}  # of the tests run on a mutant
PYTEST = ["-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]


def _walk(node):
    """``ast.walk`` in source order, skipping imports, annotations, f-strings and what ``raise`` raises."""
    if isinstance(node, (ast.Import, ast.ImportFrom, ast.JoinedStr)):
        return
    yield node
    for field, value in ast.iter_fields(node):
        if field in ("annotation", "returns") or (isinstance(node, ast.Raise) and field in ("exc", "cause")):
            continue
        for child in value if isinstance(value, list) else [value]:
            if isinstance(child, ast.AST):
                yield from _walk(child)


def _with(node, **fields):
    new = copy.copy(node)
    new.__dict__.update(fields)
    return new


def _is_str(node):
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def _neighbours(values):
    """Pairs (i, j) of adjacent, different, non-string values: value i may be replaced by value j."""
    for i in range(len(values)):
        for j in (i - 1, i + 1):
            if 0 <= j < len(values) and not any(_is_str(values[k]) or isinstance(values[k], ast.Starred)
                                                for k in (i, j)) and ast.dump(values[i]) != ast.dump(values[j]):
                yield i, j


def _variants(node):
    """(operator, old node, new node) for each mutation at ``node``."""
    if isinstance(node, ast.Compare):
        yield from (("compare", node, _with(node, ops=[*node.ops[:i], FLIP[type(op)](), *node.ops[i + 1:]]))
                    for i, op in enumerate(node.ops) if type(op) in FLIP)
    elif isinstance(node, ast.BinOp) and type(node.op) in SWAP:
        yield "binop", node, _with(node, op=SWAP[type(node.op)]())
    elif isinstance(node, ast.BoolOp):
        yield "boolop", node, _with(node, op=ast.Or() if isinstance(node.op, ast.And) else ast.And())
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        yield "not", node, node.operand
    elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
        yield "bool", node, ast.Constant(not node.value)
    elif isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        for value in dict.fromkeys([node.value + 1, 0, -node.value]):
            if value != node.value:
                yield "number", node, ast.Constant(value)
    elif isinstance(node, ast.Call):
        for i, j in _neighbours(node.args):
            yield "argument", node, _with(node, args=[*node.args[:i], node.args[j], *node.args[i + 1:]])
        kws = [k for k in node.keywords if k.arg is not None]
        for i, j in _neighbours([k.value for k in kws]):
            new_kws = [*kws[:i], ast.keyword(kws[i].arg, kws[j].value), *kws[i + 1:]]
            yield "argument", node, _with(node, keywords=new_kws + [k for k in node.keywords if k.arg is None])
        if len(node.args) >= 2 and all(isinstance(a, ast.Name) for a in node.args[:2]) \
                and node.args[0].id != node.args[1].id:
            yield "swap", node, _with(node, args=[node.args[1], node.args[0], *node.args[2:]])
    elif isinstance(node, ast.Subscript):
        parts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        for part in [p for s in parts for p in ([s.lower, s.upper] if isinstance(s, ast.Slice) else [s])]:
            if part is not None and not (isinstance(part, ast.Constant) and part.value in (None, ...)) \
                    and not _is_str(part):
                yield from (("offset", part, ast.BinOp(part, op(), ast.Constant(1))) for op in (ast.Add, ast.Sub))
    if isinstance(node, (ast.If, ast.IfExp, ast.While)):
        yield "negate", node.test, ast.UnaryOp(ast.Not(), node.test)
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        for stmt in node.body:
            docstring = isinstance(stmt, ast.Expr) and _is_str(stmt.value)
            if not (docstring or isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))):
                yield "delete", stmt, ast.Pass()


def mutations(tree):
    """Every candidate as (line, operator, old node, new node), in a fixed order for a given source."""
    return [(old.lineno, op, old, new) for node in _walk(tree) for op, old, new in _variants(node)]


def mutant_source(source: str, index: int) -> tuple[int, str, str]:
    """(line in ``source``, operator, unparsed mutant) of candidate ``index`` of ``source``."""
    tree = ast.parse(source)
    line, op, old, new = mutations(tree)[index]
    for parent in ast.walk(tree):
        for field, value in ast.iter_fields(parent):
            if value is old:
                setattr(parent, field, new)
            elif isinstance(value, list):
                value[:] = [new if v is old else v for v in value]
    return line, op, ast.unparse(tree) + "\n"


def short_diff(before: str, after: str) -> tuple[str, str]:
    """A one-line summary of the changed line (around the change) and the full zero-context diff."""
    diff = [d for d in list(difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0))[2:]
            if d[0] in "+-"]
    old = next((d[1:] for d in diff if d.startswith("-")), "")
    new = next((d[1:] for d in diff if d.startswith("+")), "")
    p = len(os.path.commonprefix([old, new]))
    s = len(os.path.commonprefix([old[p:][::-1], new[p:][::-1]]))
    clip = lambda t: t[max(p - 30, 0):len(t) - max(s - 30, 0)].strip()
    return f"{clip(old)!r} -> {clip(new)!r}", "\n".join(diff)


def run(copy_dir: Path, args: list[str], timeout: float, cache: str) -> tuple[str, float, str]:
    """('passed' | 'failed' | 'timeout', seconds, output) of ``python *args`` in the copy, in a new process group."""
    env = dict(os.environ, PYTHONPATH=str(copy_dir), JAX_COMPILATION_CACHE_DIR=cache, PYTHONDONTWRITEBYTECODE="1")
    start = time.time()
    proc = subprocess.Popen([sys.executable, *args], cwd=copy_dir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, status = proc.communicate(timeout=timeout)[0], "passed" if proc.returncode == 0 else "failed"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, status = proc.communicate()[0], "timeout"
    return status, time.time() - start, out


def copy_tree(source: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=source, check=True,
                           capture_output=True, text=True).stdout.split("\0")
    dest = Path(tempfile.mkdtemp(prefix="mutants-"))
    for name in filter(None, files):
        if (source / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, dest / name)
    return dest


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=Path(__file__).resolve().parent.parent, help="tree to mutate")
    ap.add_argument("--target", action="append", help="file to mutate, relative to the source (repeatable)")
    ap.add_argument("--tests", nargs="+", help="tests to run for every target (default: the TESTS map)")
    ap.add_argument("--per-file", type=int, default=50, help="mutants sampled per target")
    ap.add_argument("--limit", type=int, help="stop after this many mutants in all (the sample's first, round-robin)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=300, help="seconds per mutant")
    ap.add_argument("--cache", default="/tmp/mutants_jax_cache", help="JAX compilation cache shared by all runs")
    ap.add_argument("--json", type=Path, help="write the report here (rewritten after each mutant)")
    args = ap.parse_args()
    targets = {t: args.tests or TESTS[t] for t in args.target or TESTS}
    scratch = copy_tree(args.source.resolve())
    report, started = {"source": str(args.source), "seed": args.seed, "files": {}}, time.time()
    try:
        originals = {t: (scratch / t).read_text() for t in targets}
        unparsed = {t: ast.unparse(ast.parse(source)) + "\n" for t, source in originals.items()}
        for t, text in unparsed.items():
            (scratch / t).write_text(text)
        where = run(scratch, ["-c", "import jaxagent; print(jaxagent.__file__)"], 60, args.cache)[2].strip()
        if not where.startswith(str(scratch)):
            sys.exit(f"sanity: jaxagent is imported from {where!r}, not from the copy {scratch}")
        all_tests = sorted({x for ts in targets.values() for x in ts})
        status, seconds, out = run(scratch, PYTEST + all_tests, 4 * args.timeout, args.cache)
        print(f"sanity: the unmutated unparse {status} in {seconds:.0f}s (jaxagent from {where})", flush=True)
        if status != "passed":
            sys.exit(out[-3000:])
        jobs = {}  # per target: the sampled candidate indices; run round-robin so a partial run covers every file
        for t, tests in targets.items():
            count = len(mutations(ast.parse(originals[t])))
            jobs[t] = sorted(random.Random(args.seed).sample(range(count), min(args.per_file, count)))
            report["files"][t] = {"tests": tests, "candidates": count, "sampled": 0, "score": None,
                                  **dict.fromkeys(OUTCOME.values(), 0), "mutants": []}
        order = [(t, i) for row in itertools.zip_longest(*jobs.values()) for t, i in zip(jobs, row) if i is not None]
        for t, index in order[:args.limit]:
            line, op, mutated = mutant_source(originals[t], index)
            summary, diff = short_diff(unparsed[t], mutated)
            (scratch / t).write_text(mutated)
            status, seconds, out = run(scratch, PYTEST + targets[t], args.timeout, args.cache)
            (scratch / t).write_text(unparsed[t])
            print(f"{t}:{line} {op} {summary} {OUTCOME[status]} {seconds:.0f}s", flush=True)
            r = report["files"][t]
            r["mutants"].append({"line": line, "op": op, "outcome": OUTCOME[status], "seconds": round(seconds),
                                 "diff": diff, "output_tail": out[-400:] if status != "passed" else ""})
            r.update({k: sum(m["outcome"] == k for m in r["mutants"]) for k in OUTCOME.values()},
                     sampled=len(r["mutants"]))
            r["score"] = round((r["killed"] + r["timeout"]) / r["sampled"], 3)
            report["wall_s"] = round(time.time() - started)
            if args.json:
                args.json.write_text(json.dumps(report, indent=1))
        for t, r in report["files"].items():
            print(f"{t}: {r['killed']} killed + {r['timeout']} timeouts of {r['sampled']} sampled "
                  f"(score {r['score']}; {r['candidates']} candidates)")
        print(f"{time.time() - started:.0f}s in all")
    finally:
        shutil.rmtree(scratch)


if __name__ == "__main__":
    main()
