"""Prove the course on a GPU in one go, and write a report: `bash tasks.sh gpu OUTDIR`.

    python benchmarks/gpu_report.py OUTDIR                 # on a CUDA machine: the real run
    python benchmarks/gpu_report.py OUTDIR --dry-run       # the same pipeline on the CPU, tiny

On a CUDA machine it
1. names the hardware (GPU, driver, CUDA, torch, Triton, CPUs, date);
2. runs Triton's first kernel compiled for the GPU (not in the CPU interpreter) and checks it;
3. executes every solution notebook on the GPU under nbval, as the CPU suite does (the same
   sanitizers; cells tagged `nbval-ignore-output` run but their outputs are not compared),
   several notebooks at a time; chapters that load chapter 08's checkpoints wait for it;
   every `on_the_gpu(...)` call in a chapter also records its table (COURSE_GPU_RECORD);
4. runs the benchmarks (matmul throughput, attention cost, flash attention's TFLOP/s vs SDPA, speculative
   sampling, windowed/sparse/linear attention, Infini-attention's memory, RWKV's state) on the
   GPU at quick sizes;
5. writes OUTDIR/report.md, OUTDIR/notebooks.csv, OUTDIR/benchmarks/*.csv,
   OUTDIR/measurements/*.csv and the logs under OUTDIR/logs/.
It exits 1 if a step failed (the report is written anyway). Budget: under 8 minutes on an H100/H200.

--dry-run does the same on the CPU with the benchmarks at toy sizes and only the notebooks given
with --notebooks (none by default), so that the suite can test the pipeline in seconds.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from transformer_course.tools.gpu import RECORD_ENV, hardware, table  # noqa: E402

PRODUCER = re.compile(r"def load_or_train\b")
CONSUMER = re.compile(r"load_or_train\(")

GPU_BENCHMARKS = [
    ("matmul_throughput", ["--sizes", "256", "1024", "4096", "8192", "--dtypes", "float32", "bfloat16",
                           "--repeats", "10"]),
    ("attention_cost", ["--ns", "1024", "4096", "16384", "--repeats", "5"]),
    ("flash_attention", ["--ns", "512", "1024", "2048", "4096", "8192", "16384"]),
    ("speculative", ["--prompts", "4", "--gammas", "1", "2", "4", "--repeats", "2"]),
    ("long_attention", ["--ns", "1024", "4096", "16384"]),
    ("infini_memory", ["--max-tokens", "1048576", "--full-max", "65536"]),
    ("rwkv_state", ["--lengths", "1024", "8192", "32768", "--repeats", "3"]),
]
DRY_BENCHMARKS = [
    ("matmul_throughput", ["--sizes", "32", "64", "--dtypes", "float32", "--repeats", "2"]),
    ("attention_cost", ["--ns", "64", "128", "--repeats", "2"]),
    # one method each: every method is a fresh process (a second of imports), and the
    # rehearsal is of the pipeline, not of the methods (the suite tests those)
    ("long_attention", ["--ns", "256", "--repeats", "1", "--methods", "block_sparse"]),
    ("infini_memory", ["--max-tokens", "1024", "--methods", "infini"]),
    ("rwkv_state", ["--lengths", "64", "--repeats", "1"]),
]

TRITON_CHECK = """
import os, torch
from transformer_course.vector_add import triton, vector_add
device = "cuda" if torch.cuda.is_available() else "cpu"
mode = "interpreted on the CPU" if os.environ.get("TRITON_INTERPRET") == "1" else "compiled"
if triton is None:
    print("triton: not installed")
else:
    x = torch.randn(100_003, device=device)
    y = torch.randn(100_003, device=device)
    assert torch.equal(vector_add(x, y), x + y), "vector_add differs from x + y"
    print(f"triton {triton.__version__}: vector_add {mode} on {device}, equal to x + y on 100,003 elements")
"""


def environment(device: str, threads: int, out: Path) -> dict:
    env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS=str(threads), MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env[RECORD_ENV] = str(out / "measurements")
    if device == "cuda":
        env.pop("TRITON_INTERPRET", None)   # Triton compiles for the GPU
    else:
        env["CUDA_VISIBLE_DEVICES"] = ""    # the dry run stays on the CPU even on a GPU machine
    return env


def run(cmd, env, log: Path, timeout: float) -> tuple[int, float]:
    """Run cmd from the repository root, output to log; (exit status, seconds). 124 = timed out."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("w") as f:
        try:
            rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                timeout=max(timeout, 1)).returncode
        except subprocess.TimeoutExpired:
            f.write(f"\n[gpu_report] timed out after {timeout:.0f} s\n")
            rc = 124
    return rc, time.perf_counter() - start


def junit_counts(xml: Path) -> dict[str, int]:
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    if not xml.exists():
        return counts
    for case in ET.parse(xml).getroot().iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            counts["failed"] += 1
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts


def notebooks(paths: list[Path], env, out: Path, jobs: int, deadline: float) -> list[dict]:
    """Each notebook under nbval in its own pytest; those that load checkpoints wait for their maker."""
    sources = {p: p.read_text() for p in paths}
    producer = next((p for p in paths if PRODUCER.search(sources[p])), None)
    first = [p for p in paths if p == producer or not CONSUMER.search(sources[p])]
    later = [p for p in paths if p not in first]
    first.sort(key=lambda p: p != producer)   # the longest (training) chapter starts first

    def one(path: Path) -> dict:
        xml = out / "logs" / f"{path.stem}.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
               "--nbval", "--nbval-current-env", "--nbval-sanitize-with", "tests/sanitize.cfg",
               "--nbval-cell-timeout", "300", f"--junitxml={xml}", str(path)]
        rc, seconds = run(cmd, env, out / "logs" / f"{path.stem}.log", deadline - time.perf_counter())
        counts = junit_counts(xml)
        status = "passed" if rc == 0 else "timed out" if rc == 124 else "failed"
        print(f"  {path.stem:32s} {status:9s} {seconds:6.1f} s  ({counts['passed']} cells passed, "
              f"{counts['failed']} failed)", flush=True)
        return {"notebook": path.stem, "status": status, "seconds": f"{seconds:.1f}", **counts}

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {p: pool.submit(one, p) for p in first}
        if later:
            if producer is not None:
                futures[producer].result()
            futures.update({p: pool.submit(one, p) for p in later})
        return [futures[p].result() for p in paths]


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def benchmark_summary(name: str, rows: list[dict]) -> str:
    if name == "matmul_throughput":
        keep = ["device", "dtype", "n", "seconds", "gflops"]
    elif name == "attention_cost":
        keep = ["device", "dtype", "n", "impl", "seconds", "peak_extra_mib", "scores_mib"]
    else:
        keep = list(rows[0])
    return table([{k: r.get(k, "") for k in keep} for r in rows])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("outdir", type=Path)
    p.add_argument("--dry-run", action="store_true", help="on the CPU, tiny sizes, only --notebooks")
    p.add_argument("--notebooks", nargs="*", default=None,
                   help="notebook stems or paths (default: every solution notebook; none with --dry-run)")
    p.add_argument("--jobs", type=int, default=4, help="notebooks executed at once")
    p.add_argument("--budget", type=float, default=450, help="seconds for the whole run")
    args = p.parse_args(argv)

    start = time.perf_counter()
    deadline = start + args.budget
    import torch

    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA GPU here: run on a GPU machine, or pass --dry-run for the CPU rehearsal")
    out = args.outdir.resolve()
    (out / "benchmarks").mkdir(parents=True, exist_ok=True)
    cpus = os.cpu_count() or 1
    env = environment(device, max(1, cpus // max(1, args.jobs)), out)
    failures = []

    hw = hardware() if device == "cuda" else {
        "gpu": "none (dry run on the CPU)", "driver": "", "cuda": "", "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")}
    try:
        import triton
        hw["triton"] = triton.__version__
    except ImportError:
        hw["triton"] = "not installed"
    hw.update({"cpu": platform.processor() or platform.machine(), "cpus": str(cpus),
               "python": platform.python_version()})
    print("hardware: " + ", ".join(f"{k} {v}" for k, v in hw.items() if v), flush=True)

    print("triton:", flush=True)
    rc, _ = run([sys.executable, "-c", TRITON_CHECK], env, out / "logs" / "triton.log", deadline - time.perf_counter())
    triton_line = (out / "logs" / "triton.log").read_text().strip().splitlines()
    triton_line = triton_line[-1] if triton_line else ""
    print(f"  {triton_line}", flush=True)
    if rc != 0:
        failures.append("triton (see logs/triton.log)")

    from transformer_course.tools.notebooks import resolve, solution_notebooks

    names = args.notebooks if args.notebooks is not None else ([] if args.dry_run else None)
    paths = solution_notebooks() if names is None else (resolve(names) if names else [])
    print(f"notebooks under nbval on {device} ({len(paths)}, {args.jobs} at a time):", flush=True)
    nb_rows = notebooks(paths, env, out, args.jobs, deadline) if paths else []
    failures += [f"notebook {r['notebook']} {r['status']} (see logs/{r['notebook']}.log)"
                 for r in nb_rows if r["status"] != "passed"]
    if nb_rows:
        with (out / "notebooks.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(nb_rows[0]))
            writer.writeheader()
            writer.writerows(nb_rows)

    print(f"benchmarks on {device}:", flush=True)
    bench = {}
    for name, flags in (DRY_BENCHMARKS if args.dry_run else GPU_BENCHMARKS):
        csv_path = out / "benchmarks" / f"{name}_{device}.csv"
        rc, seconds = run([sys.executable, str(HERE / f"{name}.py"), "--device", device, *flags, "--out", str(csv_path)],
                          env, out / "logs" / f"{name}.log", deadline - time.perf_counter())
        print(f"  {name:32s} {'done' if rc == 0 else 'FAILED':9s} {seconds:6.1f} s", flush=True)
        if rc == 0 and csv_path.exists():
            bench[name] = read_csv(csv_path)
        else:
            failures.append(f"benchmark {name} (see logs/{name}.log)")

    measurements = sorted((out / "measurements").glob("*.csv"))
    total = time.perf_counter() - start
    lines = [f"# The course on {'a GPU' if device == 'cuda' else 'the CPU (dry run)'}: {hw['gpu']}", "",
             f"`bash tasks.sh gpu{' --dry-run' if args.dry_run else ''}`, {hw['date']} (UTC), "
             f"{total:.0f} s in all.", "", "## Hardware", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in hw.items()]
    lines += ["", "## Triton", "", f"`{triton_line or 'no output, see logs/triton.log'}`", "",
              f"## Notebooks under nbval on {device}", ""]
    if nb_rows:
        passed = sum(r["status"] == "passed" for r in nb_rows)
        lines += [f"{passed} of {len(nb_rows)} notebooks passed (cells tagged `nbval-ignore-output` run "
                  "but are not compared). Logs in `logs/`.", "", "```text", table(nb_rows), "```"]
    else:
        lines += ["No notebooks run."]
    lines += ["", f"## Benchmarks on {device}", ""]
    for name, rows in bench.items():
        lines += [f"`benchmarks/{name}_{device}.csv`:", "", "```text", benchmark_summary(name, rows), "```", ""]
    lines += ["## Chapter measurements (`on_the_gpu`)", ""]
    if measurements:
        lines += [f"- `measurements/{m.name}`" for m in measurements]
        lines += ["", "To show these in the book: copy them into `benchmarks/results/gpu/`, commit, and "
                  "re-execute the chapters that call `on_the_gpu` on the CPU."]
    else:
        lines += ["None recorded."]
    lines += ["", "## Result", "", "All steps passed." if not failures else
              "Failed:\n" + "\n".join(f"- {f}" for f in failures), ""]
    (out / "report.md").write_text("\n".join(lines))
    print(f"\nreport: {out / 'report.md'} ({total:.0f} s)" + ("" if not failures else f"; {len(failures)} failed"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
