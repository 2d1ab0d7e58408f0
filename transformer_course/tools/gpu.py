"""GPU measurements a reader without a GPU can still see.

A chapter's "On the GPU" section measures something only a CUDA GPU can (memory of the fused
attention, bf16 throughput, ...). Without a GPU the cell would print nothing useful, so it calls
``on_the_gpu``, which measures afresh on a GPU and otherwise shows the measurements committed in
``benchmarks/results/gpu/<name>.csv``, naming the hardware, the date and the dtype, or says
plainly that none are committed yet::

    from transformer_course.tools.gpu import on_the_gpu

    def attention_memory():            # runs only on a CUDA GPU; returns rows of a table
        rows = []
        for n in [1024, 4096, 16_384]:
            ...
            rows.append({"N": n, "naive MiB": f"{naive:,.0f}", "fused MiB": f"{fused:,.1f}"})
        return rows

    on_the_gpu("03_attention_memory", attention_memory, device, dtype="float16")

Such a cell is machine-dependent: tag it ``nbval-ignore-output``.

Where the measurements come from: ``bash tasks.sh gpu OUTDIR`` on a CUDA machine executes every
chapter with ``COURSE_GPU_RECORD=OUTDIR/measurements`` set, so each ``on_the_gpu`` call also
writes its table there (one CSV per name, the hardware in every row). Copy those CSVs into
``benchmarks/results/gpu/``, commit them, and re-execute the chapters on the CPU
(``python -m transformer_course.tools.notebooks execute NN_name``): the stored outputs, and so
the book, then show the GPU's numbers.
"""

from __future__ import annotations

import csv
import datetime
import os
import re
import subprocess
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "gpu"
RECORD_ENV = "COURSE_GPU_RECORD"
META = ("gpu", "driver", "cuda", "torch", "date", "dtype")
NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def hardware() -> dict[str, str]:
    """The GPU, its driver, the CUDA and torch versions and today's date (UTC)."""
    driver = ""
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=20).stdout.split("\n")[0].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "",
            "driver": driver, "cuda": torch.version.cuda or "", "torch": torch.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")}


def table(rows: list[dict]) -> str:
    """Rows of equal keys as a plain-text table, columns right-aligned."""
    cols = list(rows[0])
    width = {c: max(len(str(c)), *(len(str(r[c])) for r in rows)) for c in cols}
    line = lambda r: "  ".join(f"{str(r[c]):>{width[c]}}" for c in cols)
    return "\n".join([line({c: c for c in cols}), "  ".join("-" * width[c] for c in cols)] + [line(r) for r in rows])


def committed(name: str, results: Path = RESULTS) -> list[dict] | None:
    """The committed rows of measurement `name` (META columns included), or None if there are none."""
    path = results / f"{name}.csv"
    if not path.exists():
        return None
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return rows or None


def describe(meta: dict) -> str:
    gpu = meta.get("gpu") or "an unnamed GPU"
    versions = ", ".join(f"{k} {meta[k]}" for k in ("driver", "cuda", "torch") if meta.get(k))
    return f"{gpu} ({versions}) on {meta.get('date') or 'an unknown date'}, {meta.get('dtype') or 'dtype not recorded'}"


def record(name: str, rows: list[dict], meta: dict, folder: Path) -> Path:
    """Write rows, each with the META columns first, to folder/<name>.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.csv"
    full = [{**{k: meta.get(k, "") for k in META}, **r} for r in rows]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(full[0]))
        writer.writeheader()
        writer.writerows(full)
    return path


def on_the_gpu(name: str, measure, device, dtype: str = "", results: Path = RESULTS):
    """Show GPU measurement `name`: measured now by `measure()` on a CUDA `device`, else the
    committed one, else a plain statement that none is committed. Returns the rows shown (without
    the META columns), or None.

    `measure()` returns a list of dicts with the same keys, one per table row, values already
    rounded for printing. `dtype` names the precision it measures in (e.g. "float16").
    """
    if not NAME.match(name):
        raise ValueError(f"on_the_gpu: name must be letters, digits, '_', '-' or '.', got {name!r}")
    if torch.device(device).type == "cuda":
        rows = measure()
        if not rows:
            raise ValueError(f"on_the_gpu: measure() for {name!r} returned no rows")
        meta = {**hardware(), "dtype": dtype}
        print(f"Measured now on {describe(meta)}:")
        print(table(rows))
        if os.environ.get(RECORD_ENV):
            record(name, rows, meta, Path(os.environ[RECORD_ENV]))
        return rows
    rows = committed(name, results)
    if rows is None:
        print(f"No CUDA GPU here, and no GPU measurements of {name!r} are committed yet\n"
              f"(benchmarks/results/gpu/{name}.csv). On a GPU this cell measures them.")
        return None
    meta = {k: rows[0].get(k, "") for k in META}
    shown = [{k: v for k, v in r.items() if k not in META} for r in rows]
    print(f"No CUDA GPU here. Measured on {describe(meta)} (committed in benchmarks/results/gpu/{name}.csv):")
    print(table(shown))
    return shown
