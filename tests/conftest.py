import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # tests/exercises is importable as `exercises`

# What the chapters train and keep with `training.cached` ships with the package: the suite never
# trains it, and fails, naming the file, when a recipe changed and its payload was not remade and
# shipped (CONTRIBUTING.md, "Models that later chapters load"). The notebooks' kernels inherit this.
os.environ.setdefault("TRANSFORMER_COURSE_SHIPPED_ONLY", "1")

# --- several workers (pytest-xdist, as `bash tasks.sh test` runs the suite) ---------------------

WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))  # set in xdist's workers

if WORKERS > 1 and "OMP_NUM_THREADS" not in os.environ:
    # Share the cores: each worker, and the notebook kernels and processes it starts (they
    # inherit the variable), computes on cores / workers threads. More threads than cores make
    # PyTorch's tiny operations hundreds of times slower (CONTRIBUTING.md, "Pitfalls").
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    os.environ["OMP_NUM_THREADS"] = str(max(1, (cores or 1) // WORKERS))
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def _kernel_ports_kept_from_other_workers():
    """nbval's kernels get their five ports from jupyter_client, which picks each by binding to
    port 0 and closing it at once: another worker picking ports for its kernel, or for
    torch.distributed, in the second before the kernel binds them could get the same one, and a
    kernel would die. transformer_course.machine.free_port keeps a port from other pickers for
    about a minute while the kernel (ZeroMQ) can still bind it."""
    try:
        from jupyter_client.connect import LocalPortCache
    except ImportError:  # another jupyter_client: leave it as it is
        return
    pick = LocalPortCache.find_available_port

    def find_available_port(self, ip):
        if ip not in ("127.0.0.1", "localhost"):
            return pick(self, ip)
        from transformer_course.machine import free_port  # imports torch: only when needed

        while True:
            port = free_port("127.0.0.1")
            if port not in self.currently_used_ports:
                self.currently_used_ports.add(port)
                return port

    LocalPortCache.find_available_port = find_available_port


if WORKERS > 1:
    _kernel_ports_kept_from_other_workers()


# The slowest files first, so that the workers finish together: each file runs on one worker
# (`--dist loadfile`), the files in the order of the collection (`--no-loadscope-reorder`), and a
# slow file taken last would run alone at the end. Seconds per file (setup, call and teardown of
# its items summed, from `bash tasks.sh test` with PYTEST_ADDOPTS=--durations=0 on a fresh clone,
# 2 workers on a 2-core CPU, two runs of the same code; 2026-12-07, later); the files not named
# take under 15 s each and follow in their usual order.
SLOWEST_FIRST = [
    "tests/test_grading.py",                  # 250 s: grades 70 notebooks, 49 of them in sandboxes
    "tests/test_translations.py",             # 60 s: builds the Chinese site, every check in Chinese
    "tests/test_bridge.py",                   # 45 s: every exercise's cases through the bridge
    "solutions/09_decoding.ipynb",            # 45 s
    "tests/test_selfcheck.py",                # 35 s: the CLI runs chapters
    "tests/test_gpu_report.py",               # 30 s: the GPU report's dry run
    "solutions/13_speculative_sampling.ipynb",  # 30 s
    "solutions/17_ring_attention.ipynb",      # 25 s
    "tests/test_ring.py",                     # 25 s
    "solutions/18_modern_lm.ipynb",           # 20 s
    "tests/test_book.py",                     # 20 s
    "solutions/08_training.ipynb",            # 20 s
    "solutions/15_infini_attention.ipynb",    # 15 s
    "solutions/12_flash_attention.ipynb",     # 15 s
    "tests/test_checks.py",                   # 15 s
]


def pytest_collection_modifyitems(config, items):
    if WORKERS <= 1:
        return
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))  # stable
