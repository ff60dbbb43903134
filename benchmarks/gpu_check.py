"""The GPU check of issue 18, in one short run (under 8 minutes on one GPU): the CUDA tests
(``pytest -m cuda``), W1 timed through ``gnorm run`` on the device, W2's per-seed T_grok on the
device against reference (b) on the CPU, and the full dense rho sweep (``examples/paper-a/dense_rho.toml``)
through ``gnorm run`` on the device. Every figure goes into one file, ``<out>/gpu_check.json`` (``--out``,
default ``$OUT``), which is rewritten after each piece, so a run cut short keeps what it measured.

    benchmarks/gpu_check.sh                # on a machine with a CUDA device
    benchmarks/gpu_check.sh --cpu-smoke    # every piece shrunk, on the CPU: checks the script itself

The dense sweep gets the time the other pieces leave of ``--budget`` seconds (at least a minute); if it
has not finished then, it is interrupted (its finished runs stay stored; rerunning the same command
resumes it) and the file says so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT / "plugins" / "gnorm-bench", ROOT):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

DENSE_SWEEP = ROOT / "examples" / "paper-a" / "dense_rho.toml"
#: The dense sweep shrunk for --cpu-smoke: a small MLP (p 59, d 16, H 32), 2 seeds, 200 steps per run,
#: two clamp levels at a given Wc (so that no run needs to grok for the clamp stage to start).
SMOKE_SWEEP = ["experiment.seeds=2", "architecture.embed_dim=16", "architecture.hidden_dim=32",
               "stage.free.training.max_steps=200", "stage.clamp.critical_norm=20.0",
               "stage.clamp.zip.controller.rho=[1.0,1.1]", "stage.clamp.zip.training.max_steps=[200,200]"]


def sizes(smoke: bool) -> dict[str, Any]:
    """Each piece's size: the issue's, or shrunk to seconds for --cpu-smoke."""
    if smoke:
        return {"device": "cpu", "tests": ["tests/test_cuda.py"], "w1_seeds": 2, "w1_steps": 30, "w2_seeds": 2,
                "w2_steps": 60, "sweep_overrides": SMOKE_SWEEP}
    return {"device": "cuda", "tests": [], "w1_seeds": 16, "w1_steps": 2000, "w2_seeds": 16, "w2_steps": 30_000,
            "sweep_overrides": []}


class Figures:
    """The one output file: a JSON object, written again after every piece."""

    def __init__(self, path: Path, header: dict[str, Any]):
        self.path, self.data = path, dict(header)
        self.write()

    def add(self, piece: str, figures: dict[str, Any]) -> None:
        self.data[piece] = figures
        self.write()
        print(f"{piece}: {json.dumps(figures)[:600]}", flush=True)

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".part")
        temporary.write_text(json.dumps(self.data, indent=2) + "\n")
        temporary.replace(self.path)


def timed_process(command: list[str], timeout: float) -> dict[str, Any]:
    """Run ``command``; past ``timeout`` seconds send it Ctrl-C (then kill it 30 s later). Its wall
    seconds, exit status, whether it was interrupted, and the tail of its output."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    interrupted = False
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        interrupted = True
        process.send_signal(signal.SIGINT)
        try:
            output, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
    return {"seconds": round(time.perf_counter() - start, 2), "exit_status": process.returncode,
            "interrupted": interrupted, "output_tail": output.strip().splitlines()[-25:]}


def cuda_tests(python: str, paths: list[str], timeout: float) -> dict[str, Any]:
    result = timed_process([python, "-m", "pytest", "-m", "cuda", "-q", "-rs", "-p", "no:cacheprovider", *paths],
                           timeout)
    result["summary"] = next((line for line in reversed(result["output_tail"]) if " in " in line), "")
    return result


def w1_through_gnorm_run(size: dict[str, Any], timeout: float) -> dict[str, Any]:
    """W1 (bench.py's file on the device) through ``gnorm run``, after an untimed 20-step run that fills
    torch's compile cache."""
    from gnorm_bench.bench import workload_file
    from gnorm_bench.whole_process import gnorm_command

    with tempfile.TemporaryDirectory() as directory:
        path = workload_file(directory, size["w1_seeds"], size["w1_steps"], rho=1.0, stop=False,
                             device=size["device"])
        run = [*gnorm_command(), "run", str(path), "--out"]
        warm = timed_process([*run, str(Path(directory) / "warm"), "--set", "training.max_steps=20"], timeout)
        timed = timed_process([*run, str(Path(directory) / "timed")], timeout)
    model_steps = size["w1_seeds"] * size["w1_steps"]
    return {"seeds": size["w1_seeds"], "steps": size["w1_steps"], "warm_up_seconds": warm["seconds"],
            "seconds": timed["seconds"], "model_steps_per_second": round(model_steps / timed["seconds"], 1),
            "exit_status": timed["exit_status"], "interrupted": timed["interrupted"],
            "output_tail": timed["output_tail"][-6:]}


def w2_against_the_cpu_reference(size: dict[str, Any]) -> dict[str, Any]:
    """W2 (a full rho = 0.85 cell to completion): gnorm on the device vs reference (b) on the CPU from
    the same weights and splits; per-seed T_grok and agreement within one step of the geometric grid."""
    from gnorm.registry import default_registry
    from gnorm_bench.bench import bench_w2, grid_agreement

    start = time.perf_counter()
    ours, theirs, grid = bench_w2(default_registry(), size["w2_seeds"], size["w2_steps"], device=size["device"])
    agree = grid_agreement(ours.t_grok, theirs.t_grok, grid)
    return {"seeds": size["w2_seeds"], "gnorm_t_grok": ours.t_grok, "reference_b_cpu_t_grok": theirs.t_grok,
            "agree_within_one_grid_step": sum(agree), "target": f">= {size['w2_seeds'] - size['w2_seeds'] // 16}",
            "met": sum(agree) >= size["w2_seeds"] - size["w2_seeds"] // 16,
            "seconds_both_trainers": round(time.perf_counter() - start, 2)}


def dense_sweep(size: dict[str, Any], out: Path, timeout: float) -> dict[str, Any]:
    from gnorm_bench.whole_process import gnorm_command

    overrides = [part for item in [f"training.device={size['device']}", *size["sweep_overrides"]]
                 for part in ("--set", item)]
    result = timed_process([*gnorm_command(), "run", str(DENSE_SWEEP), "--out", str(out / "dense_rho"), *overrides],
                           timeout)
    result["timeout_seconds"] = round(timeout)
    result["overrides"] = overrides[1::2]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="shrink every piece and run it on the CPU")
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out",
                        help="directory of gpu_check.json (default: $OUT, else ./gpu_check_out)")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for the whole check (default 450)")
    args = parser.parse_args()
    begun = time.perf_counter()
    import torch

    if not args.cpu_smoke and not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA device here; use --cpu-smoke to check the script on the CPU",
              file=sys.stderr)
        sys.exit(2)
    size = sizes(args.cpu_smoke)
    out = Path(args.out)
    figures = Figures(out / "gpu_check.json", {
        "mode": "cpu-smoke" if args.cpu_smoke else "gpu", "torch": torch.__version__, "python": platform.python_version(),
        "device_name": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
        "cpu_cores": os.cpu_count(), "budget_seconds": args.budget})
    left = lambda: args.budget - (time.perf_counter() - begun)  # noqa: E731
    pieces: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("cuda_tests", lambda: cuda_tests(sys.executable, size["tests"], timeout=min(150, left()))),
        ("w1_gnorm_run", lambda: w1_through_gnorm_run(size, timeout=min(90, left()))),
        ("w2_t_grok", lambda: w2_against_the_cpu_reference(size)),
        ("dense_rho_sweep", lambda: dense_sweep(size, out, timeout=max(60.0, left()))),
    ]
    for name, piece in pieces:
        try:
            figures.add(name, piece())
        except Exception as error:  # noqa: BLE001 - one broken piece must not cost the others' figures
            figures.add(name, {"error": f"{type(error).__name__}: {error}"[:1000]})
    figures.data["total_seconds"] = round(time.perf_counter() - begun, 2)
    figures.write()
    print(f"gpu_check: figures in {figures.path} ({figures.data['total_seconds']} s)")


if __name__ == "__main__":
    main()
