"""Read the papers' released per-seed results into a gnorm store, so that gnorm's analyzers run on them.

The authors of papers A and B released one ``.npz`` file per configuration (a *cell*) with a leading seed
axis (``paper-a/<experiment>/metrics/*.npz``, ``paper-b/<experiment>/*.npz``; see
``../shared/reference/README.md``). :func:`import_reference` turns every seed of every cell of one
experiment folder into a :class:`~gnorm.components.RunRecord` shaped exactly like a run gnorm trained
itself, so the same analyzers read both.

How the papers' fields land in gnorm (``config`` is gnorm's plain run configuration, see
``RunSpec.plain()``):

=============================  =======================================================================
paper field                    gnorm
=============================  =======================================================================
folder / arm                   ``stage = "<experiment>/<controller name>"`` (e.g. ``denserho/clamp``)
p                              ``config.task.p`` (task ``modular_addition``)
alpha (training fraction)      ``config.task.train_fraction`` (never called alpha in gnorm)
n, k, m, m_test (parity)       task ``sparse_parity``: ``n_bits``, ``k``, ``train_size``, ``test_size``
d_model, H                     ``config.architecture.embed_dim`` / ``hidden_dim`` (``mlp``); for the
                               attention model ``transformer`` with ``embed_dim``, ``num_heads``,
                               ``mlp_dim`` (= H), ``num_layers`` and ``layernorm`` ("pre" or "none")
lam, lr                        ``config.optimizer.weight_decay``, ``config.optimizer.lr``
arm none / ctrl / free         ``config.controller = {"name": "free"}``
arm clamp                      ``{"name": "clamp", "rho", "t_start": t_int}``; with a group (tfnormint)
                               ``{"name": "group_clamp", "group", "rho", "t_start"}``
arm rescale                    ``{"name": "rescale", "rho", "t_start"}`` (one jump at t_int)
arm layer (normint)            ``{"name": "group_rescale", "group", "factor": f, "t_start"}``
arm alloc (B)                  ``{"name": "layer_allocation", "rho", "allocation": gamma, "t_start"}``
arm clamp_same/raised/lowered  ``{"name": "relative_clamp", "factor": 1 / rho / 1/rho, "t_start": t_fork}``
wc / wc_used / wc_group        ``config.critical_norm`` and ``facts.critical_norm`` (controllers that
                               use Wc only); ``facts.held_norm = rho * Wc``
tau, loss                      ``config.loss = {"name": "cross_entropy" | "mse", "temperature": tau}``
                               (paper A: cross entropy, temperature 1)
acc_mem, acc_grok              ``config.criterion`` (``test_accuracy``; default 0.99 / 0.90)
max_steps                      ``config.training.max_steps`` and ``RunRecord.budget``
T_grok_per_seed <= 0           ``RunRecord.t_grok = None`` (censored); T_mem likewise
wn_at_grok                     ``RunRecord.norm_at_grok`` (else ||W|| at T_grok from the trajectory)
norm_before/after_int          ``facts.norm_before_clamp`` / ``norm_after_clamp`` (clamp arms, gnorm's
                               own names), else ``norm_before_intervention`` / ``..._after_...``
wnE/wnW1/wnW2_at_grok          ``facts["norm_at_grok/embedding" | ".../hidden" | ".../readout"]``; where
                               absent, each ``norm/<group>`` trajectory at T_grok (paper A, per seed)
logit_scale (B, seed mean)     ``facts.seed_mean_logit_scale_at_grok``: the seed-mean trajectory at
                               the seed's own T_grok (linear interpolation)
every other scalar             ``config.imported.fields`` (verbatim), with ``paper``, ``experiment``,
                               ``cell_file``
=============================  =======================================================================

Evaluation schedule: ``config.evaluation`` states the paper's own. Paper A evaluated step 0 and
``geometric_schedule(max_steps, 360)`` and never stopped early; paper B evaluated every 25 steps and
stopped a cell once all its seeds grokked. Trajectories: paper A's are per seed (``train_loss``,
``test_loss``, ``train_acc``, ``test_acc``, ``weight_norm``, per-group norms as ``norm/<group>``, plus
the papers' diagnostics). Paper B released only the mean over seeds on a coarse grid; it is attached to
every seed of the cell under ``seed_mean/<name>`` keys, and that seed's own columns stay empty (None).

The cell of a run holds the dotted keys whose values differ between the cells of its stage, e.g.
``{"controller.rho": 1.15}`` or ``{"task.p": 59, "controller.rho": 0.85}``.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

import attrs
import numpy as np

from gnorm.components import RunRecord
from gnorm.errors import Problem, UserError
from gnorm.store import EVALUATION_COLUMNS, NAMED_PROBLEMS, Store

PAPER_A_EVALUATION = {"schedule": "geometric", "points": 360, "every": 25, "stop_when_grokked": False}
PAPER_B_EVALUATION = {"schedule": "every", "points": 360, "every": 25, "stop_when_grokked": True}
EVALUATION_NOTE = ("the papers' own evaluation schedules: paper A evaluated step 0 and a 360-point geometric "
                   "grid over the budget and never stopped early; paper B evaluated every 25 steps and stopped "
                   "a cell once all its seeds grokked (its trajectories are seed means on a coarse grid)")

#: The papers' layer names -> gnorm's weight-norm group names.
GROUPS = {"E": "embedding", "W1": "hidden", "W2": "readout", "embed": "embedding", "hidden": "hidden",
          "out": "readout", "attn": "attention", "mlp": "mlp", "unembed": "unembedding", "all": "all"}
#: Per-step arrays other than gnorm's five columns -> their gnorm trajectory keys.
TRAJECTORY_KEYS = {
    **{f"wn_{name}": f"norm/{group}" for name, group in GROUPS.items() if name != "all"},
    "spec_entropy_E": "spectral_entropy/embedding", "spec_entropy_W2": "spectral_entropy/readout",
    "eff_rank_E": "effective_rank/embedding", "eff_rank_W1": "effective_rank/hidden",
    "eff_lr_E": "effective_lr/embedding", "eff_lr_W1": "effective_lr/hidden", "eff_lr_W2": "effective_lr/readout",
    "fourier_gini": "fourier_gini", "logit_scale": "logit_scale", "frac_saturated": "saturated_fraction",
    "sc_frac": "softmax_collapse_fraction", "structure": "structure",
}
#: Per-seed arrays (other than T_mem, T_grok and the norm at grok) -> fact names.
SEED_FACTS = {
    "wnE_at_grok": "norm_at_grok/embedding", "wnW1_at_grok": "norm_at_grok/hidden",
    "wnW2_at_grok": "norm_at_grok/readout", "eff_lr_E_post": "effective_lr_after_intervention/embedding",
    "eff_lr_W1_post": "effective_lr_after_intervention/hidden",
    "eff_lr_W2_post": "effective_lr_after_intervention/readout",
    "N0": "norm_at_fork", "target": "held_norm",
}
#: Per-seed arrays read into the record itself (everything else per seed is in SEED_FACTS).
PER_SEED = {"T_grok_per_seed", "T_mem_per_seed", "grok_delay_per_seed", "wn_at_grok", "norm_before_int",
            "norm_after_int"}
#: Config keys never used to tell cells apart (they follow from the swept values).
NOT_CELL_KEYS = {"training.max_steps", "critical_norm"}
FREE_ARMS = {"none", "ctrl", "free"}
#: Heads of the attention model (paper A, section 7); paper B's files do not record them.
ATTENTION_HEADS = 4


@attrs.frozen
class ImportedRun:
    """One seed of one reference cell: its record and its trajectory as ``Store.write_run`` takes them."""

    record: RunRecord
    steps: list[int]
    metrics: dict[str, list[Any]]


# ---------------------------------------------------------------------------------------------------
# Small pure helpers.


def significant(value: float, digits: int = 6) -> float:
    """``value`` rounded to ``digits`` significant digits (float32 0.8500000238 -> 0.85)."""
    return float(f"{float(value):.{digits}g}")


def plain(value: Any) -> Any:
    """A numpy scalar or array as plain JSON data (nested lists of Python numbers); NaN and +-inf become
    None. Integer, boolean and all-finite float arrays convert in one ``tolist``."""
    if isinstance(value, np.ndarray):
        if not value.ndim:
            return plain(value.item())
        if value.dtype.kind in "biu" or (value.dtype.kind == "f" and np.isfinite(value).all()):
            return value.tolist()
        return _finite_or_none(value.tolist())
    if isinstance(value, (np.generic,)):
        return plain(value.item())
    return _finite_or_none(value)


def _finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float in it (nested lists too) replaced by None."""
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def times_from_paper(values: Iterable[int]) -> list[int | None]:
    """The papers' per-seed times, where a value <= 0 means the threshold was never reached -> None."""
    return [int(t) if t > 0 else None for t in values]


def critical_norm_of(fields: dict[str, Any]) -> float | None:
    """The Wc a cell's controller used: ``wc_group`` (group clamps), else ``wc_used``, else ``wc``;
    missing, NaN or 0 (paper B's free cells) means none."""
    for key in ("wc_group", "wc_used", "wc"):
        value = fields.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value) and value > 0:
            return float(value)
    return None


def controller_of(fields: dict[str, Any]) -> dict[str, Any]:
    """gnorm's ``controller`` section for a reference cell's arm (see the module docstring)."""
    arm = str(fields.get("arm", "none"))
    rho = significant(fields.get("rho", 1.0))
    t_start = int(fields.get("t_int", fields.get("t_fork", 0)))
    if arm in FREE_ARMS:
        return {"name": "free"}
    if arm == "clamp":
        group = str(fields.get("group", "all"))
        if group not in ("all", "none"):
            return {"name": "group_clamp", "group": GROUPS.get(group, group), "rho": rho, "t_start": t_start}
        return {"name": "clamp", "rho": rho, "t_start": t_start}
    if arm == "rescale":
        return {"name": "rescale", "rho": rho, "t_start": t_start}
    if arm == "layer":
        group = str(fields.get("layer", "all"))
        return {"name": "group_rescale", "group": GROUPS.get(group, group),
                "factor": significant(fields.get("f", 1.0)), "t_start": t_start}
    if arm == "alloc":
        return {"name": "layer_allocation", "rho": rho, "allocation": significant(fields.get("gamma", 0.0)),
                "t_start": t_start}
    if arm.startswith("clamp_"):
        factor = {"clamp_same": 1.0, "clamp_raised": rho, "clamp_lowered": 1.0 / rho}[arm]
        return {"name": "relative_clamp", "factor": significant(factor), "t_start": t_start}
    return {"name": arm, "rho": rho, "t_start": t_start}


USES_CRITICAL_NORM = {"clamp", "group_clamp", "rescale", "layer_allocation"}


def task_of(fields: dict[str, Any]) -> dict[str, Any]:
    if "p" in fields:
        return {"name": "modular_addition", "p": int(fields["p"]),
                "train_fraction": significant(fields.get("alpha", 0.4))}
    return {"name": "sparse_parity", "n_bits": int(fields["n"]), "k": int(fields["k"]),
            "train_size": int(fields["m"]), "test_size": int(fields.get("m_test", 0))}


def architecture_of(fields: dict[str, Any], experiment: str) -> dict[str, Any]:
    attention = "n_heads" in fields or str(fields.get("arch", "mlp")).startswith("tf")
    if attention:
        return {"name": "transformer", "embed_dim": int(fields.get("d_model", 128)),
                "num_heads": int(fields.get("n_heads", ATTENTION_HEADS)), "mlp_dim": int(fields.get("H", 512)),
                "num_layers": int(fields.get("n_layers", 1)),
                "layernorm": "none" if "noln" in experiment or "noln" in str(fields.get("arch", "")) else "pre"}
    embedding = {"embed_dim": int(fields["d_model"])} if "d_model" in fields else {}  # parity: vector inputs
    architecture = {"name": "mlp", **embedding, "hidden_dim": int(fields.get("H", 256)), "final_layernorm": False}
    return architecture


def run_config(fields: dict[str, Any], paper: str, experiment: str, cell_file: str, seed: int) -> dict[str, Any]:
    """gnorm's plain configuration for one seed of a reference cell."""
    controller = controller_of(fields)
    wc = critical_norm_of(fields) if controller["name"] in USES_CRITICAL_NORM else None
    loss = {"ce": "cross_entropy", "mse": "mse"}.get(str(fields.get("loss", "ce")), str(fields.get("loss")))
    return {
        "stage": f"{experiment}/{controller['name']}",
        "seed": seed,
        "critical_norm": wc,
        "task": task_of(fields),
        "architecture": architecture_of(fields, experiment),
        "controller": controller,
        "criterion": {"name": "test_accuracy", "threshold": significant(fields.get("acc_grok", 0.9)),
                      "memorization_threshold": significant(fields.get("acc_mem", 0.99))},
        "loss": {"name": loss, "temperature": significant(fields.get("tau", 1.0))},
        "optimizer": {"lr": significant(fields["lr"]), "weight_decay": significant(fields.get("lam", 1.0)),
                      "beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
        "training": {"max_steps": int(fields.get("max_steps", fields.get("steps_run", 0))),
                     "precision": "float32", "device": None},
        "evaluation": dict(PAPER_A_EVALUATION if paper == "A" else PAPER_B_EVALUATION),
        "imported": {"paper": paper, "experiment": experiment, "cell_file": cell_file, "fields": fields},
    }


def flatten(config: dict[str, Any]) -> dict[str, Any]:
    """``{"controller.rho": 1.15, ...}``: the run-setting sections of a config as dotted keys."""
    flat = {"critical_norm": config["critical_norm"]}
    for section in ("task", "architecture", "controller", "loss", "optimizer", "criterion", "training"):
        flat.update({f"{section}.{key}": value for key, value in config[section].items()})
    return flat


def swept_keys(configs: list[dict[str, Any]]) -> list[str]:
    """The dotted keys whose values differ between ``configs`` (in config order), minus NOT_CELL_KEYS."""
    flats = [flatten(c) for c in configs]
    keys = list(dict.fromkeys(k for flat in flats for k in flat))
    return [k for k in keys if k not in NOT_CELL_KEYS
            and len({json.dumps(flat.get(k)) for flat in flats}) > 1]


# ---------------------------------------------------------------------------------------------------
# Reading one cell file and one experiment folder.


def cell_files(folder: Path) -> list[Path]:
    """A reference experiment's cell files (paper A: ``metrics/*.npz``; paper B: ``*.npz`` without the
    ``*_weights.npz`` side files)."""
    folder = Path(folder)
    base = folder / "metrics" if (folder / "metrics").is_dir() else folder
    return sorted(p for p in base.glob("*.npz") if not p.name.endswith("_weights.npz"))


def paper_of(folder: Path) -> str:
    """``A`` or ``B`` from the folder's parent (``paper-a`` / ``paper-b``) or its layout."""
    parent = Path(folder).resolve().parent.name.lower()
    if parent in ("paper-a", "paper-b"):
        return parent[-1].upper()
    return "A" if (Path(folder) / "metrics").is_dir() else "B"


def seed_mean_at(step: int, steps: list[int], seed_mean: np.ndarray) -> float:
    """The seed-mean trajectory at ``step``, linearly interpolated between logged steps (paper B logs
    only seed means, so a seed's logit scale at its own T_grok is read off the mean trajectory)."""
    return float(np.interp(step, steps, seed_mean))


def read_cell(path: Path, paper: str, experiment: str) -> list[ImportedRun]:
    """Every seed of one cell file, with an empty cell (``read_experiment`` fills it in). A file that
    cannot be read, or lacks an array or scalar the import needs, is a UserError naming it."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except Exception as error:  # a damaged or truncated file: zipfile, numpy and OS errors alike
        raise UserError([Problem(str(path), "", f"cannot read this result file ({type(error).__name__}: "
                                 f"{' '.join(str(error).split())[:200]}); is it damaged?")]) from None
    try:
        return _cell_runs(path, arrays, paper, experiment)
    except KeyError as error:
        raise UserError([Problem(str(path), str(error.args[0]), "missing from this result file")]) from None
    except (TypeError, ValueError, IndexError) as error:
        raise UserError([Problem(str(path), "", f"not a result file of the papers' layout ({type(error).__name__}: "
                                 f"{' '.join(str(error).split())[:200]})")]) from None


def _cell_runs(path: Path, arrays: dict[str, np.ndarray], paper: str, experiment: str) -> list[ImportedRun]:
    """Every seed of one cell file's arrays."""
    t_grok = times_from_paper(arrays["T_grok_per_seed"])
    t_mem = times_from_paper(arrays["T_mem_per_seed"])
    seeds = len(t_grok)
    fields = {k: plain(v) for k, v in arrays.items() if v.ndim == 0}
    steps = [int(s) for s in arrays["steps"]]
    per_seed_trajectory = arrays.get("weight_norm") is not None and arrays["weight_norm"].ndim == 2
    runs = []
    for seed in range(seeds):
        config = run_config(fields, paper, experiment, path.name, seed)
        controller = config["controller"]["name"]
        if per_seed_trajectory:
            metrics = {k: plain(arrays[k][seed]) for k in EVALUATION_COLUMNS}
            metrics.update({TRAJECTORY_KEYS.get(k, k): plain(v[seed]) for k, v in arrays.items()
                            if v.ndim == 2 and k not in EVALUATION_COLUMNS})
        else:  # paper B: one trajectory, the mean over the cell's seeds
            metrics = {k: [None] * len(steps) for k in EVALUATION_COLUMNS}
            metrics.update({f"seed_mean/{TRAJECTORY_KEYS.get(k, k)}": plain(v) for k, v in arrays.items()
                            if v.ndim == 1 and v.shape[0] == len(steps) and k != "steps"
                            and k not in PER_SEED and k not in SEED_FACTS})
        norm_at_grok = None
        if t_grok[seed] is not None:
            if "wn_at_grok" in arrays and math.isfinite(arrays["wn_at_grok"][seed]):
                norm_at_grok = float(arrays["wn_at_grok"][seed])
            elif per_seed_trajectory and t_grok[seed] in steps:
                norm_at_grok = float(arrays["weight_norm"][seed][steps.index(t_grok[seed])])
        facts: dict[str, float] = {}
        wc = config["critical_norm"]
        if wc is not None:
            facts["critical_norm"] = wc
            if "rho" in config["controller"] and controller != "rescale":
                facts["held_norm"] = config["controller"]["rho"] * wc
        kind = "clamp" if "clamp" in controller else "intervention"
        for key, name in (("norm_before_int", f"norm_before_{kind}"), ("norm_after_int", f"norm_after_{kind}"),
                          *SEED_FACTS.items()):
            value = arrays.get(key)
            if value is not None and value.ndim == 1 and value.shape[0] == seeds and math.isfinite(value[seed]):
                if not (name == "held_norm" and controller == "free"):  # paper B's free arms hold nothing (0)
                    facts[name] = float(value[seed])
        if "steps_run" in fields:
            facts["steps_trained"] = int(fields["steps_run"])
        if per_seed_trajectory and t_grok[seed] in steps:  # paper A: each group's norm at T_grok, exactly
            at = steps.index(t_grok[seed])
            for key, values in metrics.items():
                if key.startswith("norm/") and values[at] is not None:
                    facts.setdefault(f"norm_at_grok/{key[len('norm/'):]}", float(values[at]))
        scale = arrays.get("logit_scale")
        if t_grok[seed] is not None and scale is not None and scale.ndim == 1 and scale.shape[0] == len(steps):
            facts["seed_mean_logit_scale_at_grok"] = seed_mean_at(t_grok[seed], steps, scale)
        record = RunRecord(run_id=f"{paper.lower()}/{experiment}/{path.stem}/seed{seed}", stage=config["stage"],
                           cell={}, seed=seed, config=config, t_mem=t_mem[seed], t_grok=t_grok[seed],
                           norm_at_grok=norm_at_grok, budget=config["training"]["max_steps"], facts=facts)
        runs.append(ImportedRun(record, steps, metrics))
    return runs


@attrs.frozen
class ReferenceExperiment:
    """One reference experiment folder read into runs, with what was noticed on the way."""

    runs: list[ImportedRun]
    notes: list[str]


def read_experiment(folder: str | Path) -> ReferenceExperiment:
    """Every seed of every cell of one reference experiment folder, with cells set per stage.

    A cell file whose settings and per-seed times repeat an earlier file's exactly is a duplicate in
    the release (paper B's MSE ``ctrl`` files repeat the ``base`` cell) and is skipped, with a note.
    Two files with equal settings but different results stay apart: the file name joins their cell.
    """
    folder = Path(folder)
    paper, experiment = paper_of(folder), folder.name
    files = cell_files(folder)
    if not files:
        raise UserError([Problem(str(folder), "", "holds no result files (metrics/*.npz or *.npz): nothing to "
                                 "import; name a reference experiment folder, e.g. paper-a/denserho")])
    read, damaged = {}, []
    for path in files:
        try:
            read[path] = read_cell(path, paper, experiment)
        except UserError as error:
            damaged += error.problems
    if damaged:
        raise UserError(damaged[:NAMED_PROBLEMS] + ([Problem(str(folder), "", f"... and {len(damaged) - NAMED_PROBLEMS} "
                                                             "more damaged result files")]
                                                    if len(damaged) > NAMED_PROBLEMS else []))
    runs, notes, seen = [], [], {}
    for path in files:
        cell_runs = read[path]
        if not cell_runs:
            continue
        settings = json.dumps(flatten(cell_runs[0].record.config), sort_keys=True)
        times = [(run.record.t_mem, run.record.t_grok) for run in cell_runs]
        earlier = seen.get((cell_runs[0].record.stage, settings))
        if earlier and earlier[1] == times:
            notes.append(f"{experiment}: skipped {path.name}, a duplicate of {earlier[0]} (same settings and times)")
            continue
        seen.setdefault((cell_runs[0].record.stage, settings), (path.name, times))
        runs += cell_runs
    if not runs:
        raise UserError([Problem(str(folder), "", f"its {len(files)} result files hold no seeds: nothing to import")])
    by_stage: dict[str, list[ImportedRun]] = defaultdict(list)
    for run in runs:
        by_stage[run.record.stage].append(run)
    result = []
    for stage_runs in by_stage.values():
        keys = swept_keys([run.record.config for run in stage_runs])
        settings = defaultdict(set)
        for run in stage_runs:
            settings[json.dumps(flatten(run.record.config), sort_keys=True)].add(
                run.record.config["imported"]["cell_file"])
        clash = any(len(files) > 1 for files in settings.values())
        for run in stage_runs:
            flat = flatten(run.record.config)
            cell = {k: flat.get(k) for k in keys}
            if clash:
                cell["imported.cell_file"] = run.record.config["imported"]["cell_file"]
            result.append(attrs.evolve(run, record=attrs.evolve(run.record, cell=cell)))
    return ReferenceExperiment(result, notes)


def import_reference(folder: str | Path, store: Store) -> list[RunRecord]:
    """Write every run of the reference experiment ``folder`` to ``store`` and append them to its plan
    (so ``store.records()`` returns them). Records in the store's meta table the source folders
    (``reference_sources``), that the evaluation schedule is the paper's (``evaluation_schedule``) and
    what the import noticed (``import_notes``). Re-importing a folder replaces its runs."""
    folder = Path(folder).resolve()
    experiment = read_experiment(folder)
    runs = experiment.runs
    for run in runs:
        store.write_run(run.record, run.steps, run.metrics)
    store.add_to_plan([(run.record.run_id, run.record.stage, run.record.cell) for run in runs])
    sources = store.meta_json("reference_sources", [])
    if str(folder) not in sources:
        sources.append(str(folder))
    notes = store.meta_json("import_notes", [])
    notes += [note for note in experiment.notes if note not in notes]
    store.set_meta({"reference_sources": json.dumps(sources), "evaluation_schedule": EVALUATION_NOTE,
                    "import_notes": json.dumps(notes)})
    return [run.record for run in runs]
