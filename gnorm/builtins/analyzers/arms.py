"""Arms: interventions compared side by side on matched seeds (``arms``), and the report's comparison
section: T_grok per arm with its bootstrap interval and censoring, and a figure of every arm's test
accuracy against the step (``arms_test_accuracy``).

An arm is a stage (one cell of it, where the stage sweeps): in a comparison study such as
``examples/interventions/compare.toml`` every stage is one intervention run on the same seeds, so a
seed's initialization and split are the same in every arm that shares the base configuration.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import attrs
import numpy as np

import gnorm
from gnorm.analysis.records import records_by_cell, select
from gnorm.analysis.statistics import bootstrap_cell_medians, median_or_none, nanmedian_over_seeds
from gnorm.builtins.analyzers.options import STAGES, confidence_level, resample_count
from gnorm.components import Analysis, RunRecord, Table
from gnorm.figures import STEP_LABEL, new_figure, palette, styled
from gnorm.reporting import ReportContext, ReportSection
from gnorm.science import percentile_interval
from gnorm.trajectories import align_trajectories

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: The bootstrap's seed: the same records always give the same intervals.
BOOTSTRAP_SEED = 0


@attrs.frozen
class ArmsConfig:
    """T_grok per arm (a stage, or a cell of a swept stage), in the order the arms were run.

    Per arm: its seeds, how many grokked and how many are censored (no grok within the budget), the
    budget (max_steps), the median T_grok over the grokked seeds, and its ``confidence`` percentile
    interval from ``resamples`` bootstrap resamples of the arm's seeds with replacement, censored
    seeds included (a resample's median is over the grokked seeds it drew; a resample that drew none
    is discarded and counted). ``stages`` keeps only those stages (default all)."""

    stages: list[str] = attrs.field(factory=list, metadata=STAGES)
    confidence: float = attrs.field(default=0.95, validator=confidence_level)
    resamples: int = attrs.field(default=2000, validator=resample_count)


def arm_label(stage: str, cell: str) -> str:
    """``clamp`` for an unswept stage, ``clamp (rho=1.1)`` for a cell of a swept one."""
    return stage if cell == "(all)" else f"{stage} ({cell})"


def arm_summary(times: Sequence[int | None], confidence: float, resamples: int) -> dict[str, Any]:
    """One arm's seeds' T_grok (None: censored): counts, the median over grokked seeds and its
    bootstrap percentile interval (None where no seed grokked), and the resamples discarded."""
    grokked = sum(t is not None for t in times)
    summary = {"seeds": len(times), "grokked": grokked, "censored": len(times) - grokked,
               "median_t_grok": median_or_none(times), "ci": [None, None], "discarded": 0}
    if grokked:
        medians = bootstrap_cell_medians([times], resamples, BOOTSTRAP_SEED)[0]
        kept = medians[np.isfinite(medians)]
        summary["ci"] = list(percentile_interval(kept, confidence))
        summary["discarded"] = int(resamples - kept.size)
    return summary


def arms_analyzer(config: ArmsConfig):
    def analyze(records: Sequence[RunRecord]) -> Analysis:
        chosen = select(records, config.stages, {})
        arms, notes = [], []
        for (stage, cell), runs in records_by_cell(chosen).items():
            runs = sorted(runs, key=lambda record: record.seed)
            budgets = sorted({record.budget for record in runs})
            summary = arm_summary([record.t_grok for record in runs], config.confidence, config.resamples)
            arms.append({"arm": arm_label(stage, cell), "stage": stage, "cell": runs[0].cell,
                         "budget": budgets[-1], **summary, "run_ids": [record.run_id for record in runs]})
            if len(budgets) > 1:
                notes.append(f"{arm_label(stage, cell)}: budgets differ between seeds ({budgets[0]} to {budgets[-1]})")
            if summary["censored"]:
                notes.append(f"{arm_label(stage, cell)}: {summary['censored']}/{summary['seeds']} seeds censored "
                             f"(no grok within {budgets[-1]:,} steps; median over grokked seeds)")
            if summary["discarded"]:
                notes.append(f"{arm_label(stage, cell)}: {summary['discarded']}/{config.resamples} resamples drew "
                             "no grokked seed and were discarded")
        missing = [stage for stage in config.stages if stage not in {arm["stage"] for arm in arms}]
        if missing:
            notes.append(f"no finished runs in stage(s) {', '.join(missing)}")
        level = f"{100 * config.confidence:g}%"
        table = Table(f"T_grok per arm: median over grokked seeds, {level} bootstrap CI over seeds",
                      ["arm", "seeds", "grokked", "censored", "budget", "median T_grok", f"{level} CI low",
                       f"{level} CI high"],
                      [[a["arm"], a["seeds"], a["grokked"], a["censored"], a["budget"], a["median_t_grok"], *a["ci"]]
                       for a in arms])
        numbers = {"confidence": config.confidence, "resamples": config.resamples, "arms": arms}
        return Analysis("arms", [table], numbers, notes)
    return analyze


# ---------------------------------------------------------------------------------------------------
# The report's comparison section.


@attrs.frozen(eq=False)
class ArmCurves:
    """One arm's seeds' test accuracy on a common step grid (``test_acc[s, i]``: seed s at
    ``steps[i]``, held at its last value after it stopped) and its median T_grok (None: none grokked)."""

    label: str
    steps: np.ndarray
    test_acc: np.ndarray
    median_t_grok: float | None = None


@styled
def arms_figure(arms: Sequence[ArmCurves], title: str = "Test accuracy per arm") -> Figure:
    """Each arm's median test accuracy over seeds (thick) against the step on a log axis, its seeds
    faintly, one colour per arm, and a dotted vertical line at the arm's median T_grok."""
    from matplotlib import ticker
    from matplotlib.lines import Line2D

    figure = new_figure(9.5, 4.8)
    axes = figure.subplots()
    colours = palette(len(arms), numeric=False)
    for arm, colour in zip(arms, colours):
        shown = arm.steps > 0  # step 0 has no place on a log axis
        for seed in range(arm.test_acc.shape[0]):
            axes.plot(arm.steps[shown], arm.test_acc[seed, shown], color=colour, lw=0.5, alpha=0.2)
        axes.plot(arm.steps[shown], nanmedian_over_seeds(arm.test_acc)[shown], color=colour, lw=2.0)
        if arm.median_t_grok is not None:
            axes.axvline(arm.median_t_grok, color=colour, lw=1.0, ls=":")
    axes.set_xscale("log")
    axes.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:,.0f}"))
    axes.set_ylim(-0.03, 1.03)
    axes.set_xlabel(STEP_LABEL)
    axes.set_ylabel("test accuracy (fraction correct)")
    axes.set_title(title)
    handles = [Line2D([], [], color=c, lw=2.0, label=arm.label) for arm, c in zip(arms, colours)]
    handles += [Line2D([], [], color="0.2", lw=2.0, label="median over seeds"),
                Line2D([], [], color="0.2", lw=0.5, alpha=0.5, label="single seeds"),
                Line2D([], [], color="0.2", lw=1.0, ls=":", label=r"median $T_\mathrm{grok}$")]
    figure.legend(handles=handles, loc="outside right upper", frameon=False)
    return figure


def arm_curves(arm: dict[str, Any], context: ReportContext) -> ArmCurves:
    """An arm of the analysis's numbers with its seeds' stored test accuracy, read from the store."""
    steps, aligned, _ = align_trajectories([context.trajectory(run_id) for run_id in arm["run_ids"]], ("test_acc",))
    return ArmCurves(arm["arm"], steps, aligned["test_acc"], arm["median_t_grok"])


def arms_section(config: ArmsConfig, analysis: Analysis, context: ReportContext) -> ReportSection:
    """The T_grok-per-arm table and notes, and every arm's test accuracy against the step (file
    ``arms_test_accuracy``)."""
    section = ReportSection("Comparing interventions")
    arms = analysis.numbers["arms"]
    if not arms:
        section.leave_out("test accuracy per arm", "no finished runs in the arms' stages")
        return section
    section.add(f"{len(arms)} arms on matched seeds (a seed's split is the same in every arm, and so are its "
                "initial weights wherever the arms share the task, the architecture and the weight decay they "
                "start from: a stage's `init_weight_decay`).")
    section.analysis(analysis)
    curves = [arm_curves(arm, context) for arm in arms]
    if not any(np.isfinite(c.test_acc).any() for c in curves):
        section.leave_out("test accuracy per arm", "no test-accuracy trajectories are stored for these runs")
        return section
    section.figure("arms_test_accuracy", arms_figure(curves),
                   "Test accuracy against the step per arm: median over seeds (thick), single seeds (faint), "
                   "dotted at the arm's median T_grok")
    return section


def arms_report_config(records: Sequence[RunRecord]) -> ArmsConfig | None:
    """The comparison section is drawn where the experiment file asks for it (``[[analysis]] name =
    "arms"``), never by default, so other studies' reports keep their sections."""
    return None


ANALYZERS = [
    gnorm.Analyzer(name="arms", summary="T_grok per arm (stage) with bootstrap CI, censoring and budget",
                   config_class=ArmsConfig, factory=arms_analyzer, report=arms_section,
                   report_config=arms_report_config),
]
