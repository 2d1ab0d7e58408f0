"""The GPU path, rehearsed on the CPU: `bash tasks.sh gpu OUTDIR --dry-run` and `on_the_gpu`."""

import csv
import subprocess
import sys

import nbformat

from transformer_course.tools import gpu
from transformer_course.tools.notebooks import ROOT


def test_on_the_gpu_records_then_shows_committed(tmp_path, monkeypatch, capsys):
    results = tmp_path / "results"
    gpu.on_the_gpu("demo", lambda: [], "cpu", results=results)
    assert "no GPU measurements of 'demo' are committed yet" in capsys.readouterr().out

    # on a GPU, the cell measures afresh and (under `tasks.sh gpu`) records what it measured
    monkeypatch.setenv(gpu.RECORD_ENV, str(results))
    rows = gpu.on_the_gpu("demo", lambda: [{"N": 1024, "MiB": "4.0"}, {"N": 4096, "MiB": "64.0"}], "cuda",
                          dtype="float16", results=results)
    assert rows[1] == {"N": 4096, "MiB": "64.0"} and "Measured now on" in capsys.readouterr().out
    with (results / "demo.csv").open() as f:
        stored = list(csv.DictReader(f))
    assert stored[0]["dtype"] == "float16" and stored[0]["date"] and stored[0]["torch"]

    # without a GPU, the committed rows are shown, with the hardware, date and dtype named
    shown = gpu.on_the_gpu("demo", lambda: 1 / 0, "cpu", results=results)
    out = capsys.readouterr().out
    assert shown == [{"N": "1024", "MiB": "4.0"}, {"N": "4096", "MiB": "64.0"}]
    assert "No CUDA GPU here. Measured on" in out and "float16" in out and stored[0]["date"] in out
    assert "4096" in out.splitlines()[-1]


def test_dry_run_writes_the_report(tmp_path):
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    cell = nbformat.v4.new_code_cell("from transformer_course.tools.gpu import on_the_gpu\n"
                                     "rows = on_the_gpu('dry_run_demo', lambda: [{'n': 1}], 'cpu')\n"
                                     "print(rows)")
    said = ("No CUDA GPU here, and no GPU measurements of 'dry_run_demo' are committed yet\n"
            "(benchmarks/results/gpu/dry_run_demo.csv). On a GPU this cell measures them.\nNone\n")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=said)]
    cell.execution_count = 1
    nb.cells = [cell]
    path = tmp_path / "tiny.ipynb"
    nbformat.write(nb, path)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_report.py"), str(out), "--dry-run",
                           "--notebooks", str(path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    report = (out / "report.md").read_text()
    for want in ("## Hardware", "| torch |", "vector_add interpreted on the CPU", "1 of 1 notebooks passed",
                 "benchmarks/matmul_throughput_cpu.csv", "benchmarks/attention_cost_cpu.csv",
                 "benchmarks/long_attention_cpu.csv", "All steps passed"):
        assert want in report, want
    for name in ("matmul_throughput_cpu", "attention_cost_cpu", "long_attention_cpu",
                 "infini_memory_cpu", "rwkv_state_cpu"):
        with (out / "benchmarks" / f"{name}.csv").open() as f:
            assert list(csv.DictReader(f)), name
    with (out / "notebooks.csv").open() as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["passed"]
