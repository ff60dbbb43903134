"""Whole-process rows of ``gnorm bench``: ``gnorm run`` of a one-cell file (a fresh process, the default
executor, start-up and storing included) against a reference script that a user writes without gnorm
(``python script.py``, also a fresh process), on the same work. Ratio = reference seconds / gnorm seconds.

W3: a small model as in exploratory work: (a * b) mod 83, the MLP with d = 32, H = 64, training fraction
0.4, 8 seeds, 2000 full steps (no early stop), AdamW lr 1e-3 with weight decay 1, free training,
train and test evaluated every 25 steps. Reference: ``per_seed_script.py`` (one ``torch.nn.Module`` and
``torch.optim.AdamW`` per seed, seeds one after another).
W1 as whole processes: ``gnorm run`` of bench.py's W1 file against ``batched_script.py`` (reference (b):
seeds in one tensor, einsum, hand-written AdamW), same clamp and evaluation steps.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import attrs

from gnorm.components import Table

from gnorm_bench.bench import CRITICAL_NORM, Row, Trainer, workload_file

HERE = Path(__file__).parent

W3 = """
[experiment]
name = "w3"
seeds = {seeds}
[task]
name = "modular_multiplication"
p = {p}
train_fraction = {train_fraction}
[architecture]
name = "mlp"
embed_dim = {embed_dim}
hidden_dim = {hidden_dim}
[optimizer]
lr = {lr}
weight_decay = {weight_decay}
[training]
max_steps = {steps}
[evaluation]
schedule = "every"
every = {every}
stop_when_grokked = false
[[stage]]
name = "free"
controller = {{ name = "free" }}
"""


@attrs.frozen
class SmallStudy:
    """W3's workload: what both the experiment file and the reference script are told."""

    seeds: int = 8
    steps: int = 2000
    p: int = 83
    embed_dim: int = 32
    hidden_dim: int = 64
    train_fraction: float = 0.4
    every: int = 25
    lr: float = 1e-3
    weight_decay: float = 1.0

    def experiment_text(self) -> str:
        return W3.format(**attrs.asdict(self))

    def script_arguments(self) -> list[str]:
        return ["--task", "multiplication", "--p", str(self.p), "--embed-dim", str(self.embed_dim),
                "--hidden-dim", str(self.hidden_dim), "--seeds", str(self.seeds), "--steps", str(self.steps),
                "--every", str(self.every), "--train-fraction", str(self.train_fraction), "--lr", str(self.lr),
                "--weight-decay", str(self.weight_decay)]


def gnorm_command() -> list[str]:
    """``gnorm`` as a user types it: the console script next to this interpreter, else the same entry
    point through ``python -c``."""
    script = Path(sys.executable).with_name("gnorm")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from gnorm.cli import main; sys.exit(main(prog_name='gnorm'))"]


def run_seconds(command: Sequence[str], what: str) -> float:
    """Wall seconds of ``command`` as a fresh process (its output kept from the terminal); a failed
    process is an error, never a speed."""
    start = time.perf_counter()
    finished = subprocess.run(list(command), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if finished.returncode != 0:
        tail = (finished.stderr or finished.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"{what} exited with status {finished.returncode}: " + " | ".join(tail))
    return seconds


def gnorm_run_seconds(experiment_text: str, extra: Sequence[str] = ()) -> float:
    """Wall seconds of ``gnorm run FILE --out DIR`` on ``experiment_text``, in a fresh directory."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "study.toml"
        path.write_text(experiment_text)
        return run_seconds([*gnorm_command(), "run", str(path), "--out", str(Path(directory) / "out"), *extra],
                           "gnorm run")


def script_seconds(script: str, arguments: Sequence[str]) -> float:
    """Wall seconds of ``python script arguments`` (a reference script of this package)."""
    return run_seconds([sys.executable, str(HERE / script), *arguments], script)


def w3_trainers(study: SmallStudy) -> list[Trainer]:
    model_steps = study.seeds * study.steps
    return [Trainer("reference: python per_seed_script.py (module + torch AdamW per seed)", model_steps,
                    lambda: script_seconds("per_seed_script.py", study.script_arguments())),
            Trainer("gnorm run (one-cell file, default executor)", model_steps,
                    lambda: gnorm_run_seconds(study.experiment_text()))]


def w1_file_text(seeds: int, steps: int) -> str:
    """bench.py's W1 experiment file (clamp at rho 1 from step 500, 360-point geometric grid)."""
    with tempfile.TemporaryDirectory() as directory:
        return workload_file(directory, seeds, steps, rho=1.0, stop=False).read_text()


def w1_script_arguments(seeds: int, steps: int) -> list[str]:
    from gnorm.science import geometric_schedule

    grid = ",".join(str(step) for step in geometric_schedule(steps, 360).tolist())
    return ["--task", "addition", "--p", "59", "--seeds", str(seeds), "--steps", str(steps),
            "--held-norm", str(CRITICAL_NORM), "--clamp-from", "500", "--eval-steps", grid]


def w1_trainers(seeds: int, steps: int) -> list[Trainer]:
    model_steps = seeds * steps
    return [Trainer("reference (b): python batched_script.py (seeds in one tensor, hand AdamW)", model_steps,
                    lambda: script_seconds("batched_script.py", w1_script_arguments(seeds, steps))),
            Trainer("gnorm run (W1 file, default executor)", model_steps,
                    lambda: gnorm_run_seconds(w1_file_text(seeds, steps)))]


def warm_up(echo: Callable[[str], None], name: str, experiment_text: str) -> None:
    """One untimed ``gnorm run`` of a short version of the file: torch's compile cache and the OS's
    file cache then hold what every timed run reads, for gnorm and the references alike."""
    echo(f"  warm-up, {name} through gnorm run for 20 steps (untimed): "
         f"{gnorm_run_seconds(experiment_text, ['--set', 'training.max_steps=20']):.1f}s")


def whole_process_report(name: str, rounds: list[list[Row]], target: float) -> tuple[Table, list[str]]:
    """The table (per process: median seconds over the rounds, their range when several) and the target
    line: the median over rounds of reference seconds / gnorm seconds (row 0 is the reference, row 1
    gnorm), the per-round ratios, and met / NOT met."""
    repeats = len(rounds)
    ratios = [rows[0].seconds / rows[1].seconds for rows in rounds]
    ratio = statistics.median(ratios)
    table_rows = []
    for position, row in enumerate(rounds[0]):
        seconds = [rows[position].seconds for rows in rounds]
        spread = [f"{min(seconds):.1f}-{max(seconds):.1f}"] if repeats > 1 else []
        table_rows.append([row.trainer, statistics.median(seconds), *spread,
                           statistics.median(rows[position].rate for rows in rounds)])
    header = ["seconds"] if repeats == 1 else [f"seconds (median of {repeats} rounds)", "range"]
    table = Table(f"{name}, whole processes", ["process", *header, "model-steps/s"], table_rows)
    per_round = (f" (median of {repeats} rounds: {', '.join(f'{r:.2f}x' for r in ratios)}; met in "
                 f"{sum(r >= target for r in ratios)} of {repeats})") if repeats > 1 else ""
    line = (f"target {name} >= {target:g}x the reference, whole processes (reference seconds / gnorm seconds): "
            f"{ratio:.2f}x{per_round} {'met' if ratio >= target else 'NOT met'}")
    return table, [line]

