"""Where ``gnorm run`` spends its time before the first training step, on a one-cell file (W3 of ``gnorm
bench``: (a*b) mod 83, d 32, H 64, 8 seeds, evaluation every 25).

Two measurements, each in fresh processes:

1. A timeline of one real ``gnorm run`` (the default executor, a fresh results directory): a small
   driver process runs ``gnorm.cli.main`` with timestamps wrapped around its stages (importing the
   command line, building the registry, loading the file, opening the store, starting the executor,
   the first task submitted, the first step reported back by a worker, the last run stored, exit).
2. What each piece costs alone in a fresh interpreter (median of ``--repeats``): the bare interpreter,
   ``import gnorm.cli``, ``import torch``, the registry, loading the W3 file (which builds its model on
   the meta device), the imports a worker makes before it trains (``gnorm.worker``), and a worker pool
   started and answering a first task.

    python benchmarks/startup.py [--steps 25] [--repeats 3]

Run it under the shared CPU lock on a shared machine (``flock /tmp/gnorm-cpu.lock ...``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins" / "gnorm-bench"))

#: The driver: ``gnorm run`` in this process, with each stage's start and end time written to a JSON
#: file. Wrapped names are looked up where ``gnorm run`` looks them up.
DRIVER = r"""
import json, sys, time
events = [("interpreter ready", time.time())]
mark = lambda name: events.append((name, time.time()))
import gnorm.cli
mark("import gnorm.cli")
import gnorm.registry, gnorm.studies, gnorm.store, gnorm.builtins.executors as executors, gnorm.progress

def wrap(owner, name, before, after=None):
    original = getattr(owner, name)
    def wrapped(*args, **kwargs):
        if before: mark(before)
        try:
            return original(*args, **kwargs)
        finally:
            if after: mark(after)
    setattr(owner, name, wrapped)

wrap(gnorm.registry, "default_registry", "registry: start", "registry: built")
wrap(gnorm.studies, "load", "load file: start", "load file: loaded and checked")
wrap(gnorm.store.Store, "__init__", "store: open", "store: opened")
wrap(executors, "local_executor", "executor: start", "executor: pool object made")
first = {}
def first_only(owner, name, label):
    original = getattr(owner, name)
    def wrapped(self, *args, **kwargs):
        if label not in first:
            first[label] = True
            mark(label)
        return original(self, *args, **kwargs)
    setattr(owner, name, wrapped)
first_only(executors.LocalExecutor, "submit", "first task submitted (workers spawn now)")
first_only(gnorm.progress.Progress, "step", "first step reported by a worker")
first_only(gnorm.progress.Progress, "job_ended", "first cell's results back")
sys.argv = ["gnorm", *sys.argv[2:]]
try:
    gnorm.cli.main()
except SystemExit:
    pass
finally:
    mark("exit")
    with open(OUT, "w") as handle:
        json.dump(events, handle)
"""

PIECES = {
    "bare interpreter": "pass",
    "import gnorm.cli": "import gnorm.cli",
    "import torch": "import torch",
    "registry (default_registry, with entry points)": "from gnorm.registry import default_registry; default_registry()",
    "import + registry + load the W3 file": ("from gnorm.registry import default_registry; "
                                             "from gnorm.studies import load; load({path!r}, default_registry())"),
    "worker imports (gnorm.worker: torch, the training core)": "import gnorm.worker",
    "import torch._dynamo (what a meta-device build pulls in)": "import torch, torch._dynamo",
    "matplotlib.figure (what gnorm.report imports)": "import matplotlib.figure",
}


def timeline(path: Path, steps: int) -> list[tuple[str, float]]:
    """One ``gnorm run`` of ``path`` with ``steps`` steps, its events as seconds since launch."""
    with tempfile.TemporaryDirectory() as directory:
        out = Path(directory) / "events.json"
        driver = f"OUT = {str(out)!r}\n" + DRIVER
        launch = time.time()
        subprocess.run([sys.executable, "-c", driver, "gnorm", "run", str(path), "--out",
                        str(Path(directory) / "results"), "--set", f"training.max_steps={steps}"],
                       check=True, capture_output=True, text=True)
        return [(name, at - launch) for name, at in json.loads(out.read_text())]


def piece_seconds(code: str, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def pool_seconds(repeats: int) -> float:
    """A local pool of this machine's default size started from an interpreter that has imported
    gnorm's executors, until every worker has answered a first task that imports the training core."""
    code = ("import time, gnorm.builtins.executors as e; start = time.perf_counter(); "
            "pool = e.LocalExecutor(max(1, e.machine_cores())); "
            "[f.result() for f in [pool.submit(exec, 'import gnorm.worker') for _ in range(pool.capacity)]]; "
            "print(time.perf_counter() - start); pool.shutdown()")
    times = [float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                  text=True).stdout.split()[-1]) for _ in range(repeats)]
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=25, help="training steps of the timed gnorm run")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per piece (median)")
    args = parser.parse_args()
    from gnorm_bench.whole_process import SmallStudy

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "w3.toml"
        path.write_text(SmallStudy().experiment_text())
        print(f"gnorm run of the W3 file for {args.steps} steps: timeline (seconds since launch)")
        previous = 0.0
        for name, at in timeline(path, args.steps):
            print(f"  {at:7.2f}  (+{at - previous:5.2f})  {name}")
            previous = at
        print(f"\neach piece alone in a fresh process (median of {args.repeats}, seconds)")
        for name, code in PIECES.items():
            print(f"  {piece_seconds(code.format(path=str(path)), args.repeats):7.2f}  {name}")
        print(f"  {pool_seconds(args.repeats):7.2f}  local pool started, every worker through `import gnorm.worker`")


if __name__ == "__main__":
    main()
