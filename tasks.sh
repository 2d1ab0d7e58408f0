#!/usr/bin/env bash
# One entry point for the course's chores. Each command first makes sure .venv holds the
# pinned environment (a no-op when requirements.txt and pyproject.toml are unchanged).
#
#   bash tasks.sh book     build the book into _build/html, its Chinese edition into _build/html/zh
#   bash tasks.sh book --lang zh
#                          one edition only (en or zh)
#   bash tasks.sh book --no-solutions
#                          the same without the solutions: each exercise shows its stub, for a
#                          class whose grades count
#   bash tasks.sh test [PYTEST ARGS]
#                          run the whole test suite on every core (-n 0: in one process)
#   bash tasks.sh sync     after editing solutions/: regenerate the package exports, chapters/ and
#                          the translated student notebooks (zh/chapters/)
#   bash tasks.sh catalogs after changing prose or a check's message: refresh the translation
#                          catalogs (locales/, transformer_course/locales/); then translate what
#                          `python -m transformer_course.tools.translations todo` lists, and sync
#   bash tasks.sh gpu OUTDIR [--dry-run]
#                          on a CUDA machine: every chapter under nbval on the GPU, Triton compiled,
#                          the benchmarks; a report (markdown + CSVs) into OUTDIR (under 8 minutes
#                          on an H100). --dry-run rehearses the same pipeline on the CPU in seconds
#   bash tasks.sh setup    only make the environment
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python3}
VENV=.venv

# The grader runs each submission in a bubblewrap sandbox (book/grading.md): install it where we can.
sandbox_tool() {
  command -v bwrap > /dev/null && return
  if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
    echo "installing bubblewrap, the grader's sandbox (log: $VENV/install.log)"
    { apt-get install -y -q bubblewrap || { apt-get update -q && apt-get install -y -q bubblewrap; }; } \
      >> "$VENV/install.log" 2>&1 || echo "could not install bubblewrap; the grader will say what to do"
  else
    echo "note: grading needs bubblewrap (bwrap): e.g. sudo apt-get install bubblewrap (Debian, Ubuntu)"
  fi
}

# uv installs the 2.7 GB of wheels in parallel and byte-compiles them on every core: half pip's
# time (a fresh clone on a 2-core VM, empty caches: 47 s for the whole setup, against about 100 s
# with pip). Where uv cannot be had, pip does it. uv reads no pip configuration: a pip find-links
# folder (a local torch wheel) is passed on.
UV_VERSION=0.13.9
install_with_uv() {
  "$VENV/bin/python" -m pip install -q "uv==$UV_VERSION" || return 1
  local links=() link
  for link in ${PIP_FIND_LINKS:-$("$VENV/bin/python" -m pip config get global.find-links 2>/dev/null || true)}; do
    links+=(--find-links "$link")
  done
  "$VENV/bin/uv" pip install --python "$VENV/bin/python" --compile-bytecode \
    ${links[@]+"${links[@]}"} -r requirements.txt &&
    "$VENV/bin/uv" pip install --python "$VENV/bin/python" --no-deps --no-build-isolation -e .
}

install_with_pip() {
  "$VENV/bin/python" -m pip install --upgrade pip &&
    "$VENV/bin/python" -m pip install -r requirements.txt &&
    "$VENV/bin/python" -m pip install --no-deps --no-build-isolation -e .
}

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -c 'import sys; assert sys.version_info >= (3, 10), "Python 3.10+ needed (3.11 recommended)"'
    "$PY" -m venv "$VENV"
  fi
  local stamp="$VENV/.installed" want
  want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "installing the pinned environment into $VENV (log: $VENV/install.log)"
    { install_with_uv || install_with_pip; } > "$VENV/install.log" 2>&1 || { tail -n 40 "$VENV/install.log"; exit 1; }
    echo "$want" > "$stamp"
  fi
  sandbox_tool
  # The course's own modules byte-compiled once (a no-op when up to date): where
  # PYTHONDONTWRITEBYTECODE is set (these machines set it), and in the read-only grading
  # sandboxes, every process would otherwise compile them again.
  "$VENV/bin/python" -m compileall -q transformer_course > /dev/null || true
  export PATH="$PWD/$VENV/bin:$PATH" PYTHONHASHSEED=0
}

case "${1:-}" in
  setup) setup ;;
  book)
    setup
    shift
    python -m transformer_course.tools.notebooks book "$@"
    ;;
  gpu)
    setup
    shift
    python benchmarks/gpu_report.py "$@"
    ;;
  test)
    setup
    shift
    # On every core (pytest-xdist): one worker per CPU, each test file and each notebook on
    # one worker, in order (a notebook's cells share one kernel), the slowest files first
    # (tests/conftest.py orders them). Arguments go to pytest and win: `-n 0` or
    # `-p no:xdist` runs everything in this one process (for pdb, -s, -x), `-n 4` picks the
    # number of workers; so does PYTEST_XDIST_AUTO_NUM_WORKERS. A worker that crashes is not
    # replaced: its file fails and the others go on (under loadfile, xdist 3.8 replacing a worker
    # can stop the run with an INTERNALERROR or hang it: pytest-xdist issues 1189, 1323, 1362).
    parallel=(-n auto --dist loadfile --no-loadscope-reorder --max-worker-restart 0)
    for arg in "$@"; do
      case "$arg" in
        no:xdist|-pno:xdist) parallel=() ;;
      esac
    done
    if [ -z "${PYTEST_XDIST_AUTO_NUM_WORKERS:-}" ]; then
      PYTEST_XDIST_AUTO_NUM_WORKERS=$(python -c 'import os; print(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)')
      export PYTEST_XDIST_AUTO_NUM_WORKERS
    fi
    python -m pytest ${parallel[@]+"${parallel[@]}"} "$@"
    ;;
  catalogs)
    setup
    python -m transformer_course.tools.notebooks catalogs
    ;;
  sync)
    setup
    shift
    python -m transformer_course.tools.notebooks sync "$@"
    ;;
  *)
    sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
