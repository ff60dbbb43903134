"""``gnorm report``: a Markdown report whose figures exist, apply to the data and say what they show.

Stores are built without training: synthetic runs written through ``Store.write_run`` (a free stage
over p and a clamp stage over p x rho x lr whose delays follow T_grok = exp(1 + 7.5 rho) / lr-factor),
and the papers' dense rho sweep read with ``import_reference`` where the reference data is present.
"""

from __future__ import annotations

import math
import re
import shutil
import types
from pathlib import Path

import attrs
import numpy as np
import pytest
from click.testing import CliRunner

import gnorm
from gnorm.builtins.analyzers.delay_law import DelayLawGroup, delay_law_band, delay_law_figure, delay_law_fits
from gnorm.builtins.analyzers.levers import lever_heatmap_figure
from gnorm.cli import main
from gnorm.components import Analysis, RunRecord, Table
from gnorm.importers import import_reference
from gnorm.registry import Provider, build_registry, default_registry
from gnorm.report import markdown_table, run_report_analyses, write_report
from gnorm.reporting import ReportSection
from gnorm.runmodel import ComponentChoice
from gnorm.store import Store
from gnorm.trajectories import align_trajectories

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
ALPHA = 7.5
RHOS = (0.9, 1.0, 1.1, 1.2)
LRS = (1e-3, 4e-3)
SEEDS = 4
BUDGET = 60_000


@pytest.fixture(scope="module")
def registry():
    return default_registry()


def _trajectory(t_grok: int | None, budget: int, held: float | None) -> tuple[list[int], dict[str, list[float]]]:
    """Train accuracy saturates by step 300, test accuracy crosses 0.9 at t_grok, the norm rises to 60
    and is held from step 200 when ``held`` is given; a grokked run stops at its T_grok."""
    end = t_grok if t_grok is not None else budget
    steps = sorted({*np.geomspace(10, end, 25).astype(int).tolist(), end})
    s = np.array(steps, float)
    test = 1 / (1 + np.exp(-8 * (np.log(s) - np.log(t_grok if t_grok else 10 * budget)))) * 0.9 / 0.5
    test = np.minimum(test, 1.0)
    norm = 60 * (1 - np.exp(-s / 100))
    if held is not None:
        norm = np.where(s >= 200, held, norm)
    metrics = {"train_loss": list(np.exp(-s / 100)), "test_loss": list(1 - test), "train_acc": list(np.minimum(s / 300, 1)),
               "test_acc": list(test), "weight_norm": list(norm)}
    return steps, metrics


def _record(run_id: str, stage: str, cell: dict, seed: int, p: int, lr: float, controller: dict,
            t_grok: int | None, norm: float | None, facts: dict) -> RunRecord:
    config = {"stage": stage, "seed": seed, "critical_norm": facts.get("critical_norm"),
              "task": {"name": "modular_addition", "p": p, "train_fraction": 0.4},
              "architecture": {"name": "mlp", "embed_dim": 32, "hidden_dim": 64},
              "controller": controller, "optimizer": {"lr": lr, "weight_decay": 1.0},
              "training": {"max_steps": BUDGET}, "evaluation": {"schedule": "geometric", "points": 360}}
    return RunRecord(run_id=run_id, stage=stage, cell=cell, seed=seed, config=config, t_mem=300, t_grok=t_grok,
                     norm_at_grok=norm, budget=BUDGET, facts=facts)


def _write(store: Store, record: RunRecord, held: float | None, plan: list) -> None:
    steps, metrics = _trajectory(record.t_grok, record.budget, held)
    store.write_run(record, steps, metrics)
    plan.append((record.run_id, record.stage, record.cell))


def build_store(directory: Path, clamp: bool = True) -> Store:
    """Free runs at p = 41, 59, 71 (Wc = 11 p^0.4, 1% spread across seeds) and, if ``clamp``, a clamp
    stage over p in (41, 59) x rho x lr with T_grok = exp(1 + 7.5 rho) * (1e-3 / lr)^0.3 * (1 +- 5%);
    at p = 41, rho = 1.2, lr = 1e-3 one seed is censored."""
    store = Store(directory, create=True)
    rng = np.random.default_rng(0)
    plan: list = []
    wc = {}
    for p in (41, 59, 71):
        norms = 11 * p**0.4 * (1 + 0.01 * rng.standard_normal(SEEDS))
        wc[p] = float(np.median(norms))
        for seed, norm in enumerate(norms):
            record = _record(f"free-p{p}-s{seed}", "free", {"task.p": p}, seed, p, 1e-3, {"name": "free"},
                             int(3000 * (1 + 0.1 * seed)), float(norm), {})
            _write(store, record, None, plan)
    if clamp:
        for p in (41, 59):
            for rho in RHOS:
                for lr in LRS:
                    for seed in range(SEEDS):
                        t = math.exp(1 + ALPHA * rho) * (1e-3 / lr) ** 0.3 * (1 + 0.05 * (seed - 1.5))
                        censored = p == 41 and rho == 1.2 and lr == 1e-3 and seed == 0
                        held = rho * wc[p]
                        record = _record(f"clamp-p{p}-r{rho}-lr{lr}-s{seed}", "clamp",
                                         {"task.p": p, "controller.rho": rho, "optimizer.lr": lr}, seed, p, lr,
                                         {"name": "clamp", "rho": rho, "t_start": 200},
                                         None if censored else int(t), None if censored else held,
                                         {"critical_norm": wc[p], "held_norm": held})
                        _write(store, record, held, plan)
    store.set_plan("synthetic.toml", "", plan)
    return store


def referenced_files(report: Path) -> list[Path]:
    links = re.findall(r"\]\((figures/[^)]+)\)", report.read_text())
    return [report.parent / link for link in links]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory, registry):
    directory = tmp_path_factory.mktemp("synthetic")
    store = build_store(directory / "store")
    written = write_report(store, directory / "report", registry)
    return store, written


# -- the report as a whole ----------------------------------------------------------------------------


def test_report_embeds_every_figure_that_applies_as_png_and_pdf(synthetic):
    _, written = synthetic
    text = written.path.read_text()
    assert "alpha" in text and "## Delay law" in text and "### Shared exponent" in text and "### Levers" in text
    files = referenced_files(written.path)
    names = {f.name for f in files}
    for stem in ("delay_law", "rho_lr_heatmap_p=41", "rho_lr_heatmap_p=59", "critical_norm_vs_p", "trajectories_free"):
        assert {f"{stem}.png", f"{stem}.pdf"} <= names, stem
    assert any(n.startswith("trajectories_clamp_") for n in names)
    for path in files:
        assert path.is_file() and path.stat().st_size > 1000, path
    assert sorted(written.figures) == sorted(set(files))  # nothing written that the report does not show
    assert written.left_out == []


def test_report_tables_carry_the_fitted_exponent_and_the_censoring(synthetic):
    _, written = synthetic
    text = written.path.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| p=")]
    alphas = [float(row.split("|")[3]) for row in rows if row.count("|") == 8]  # the delay-law table
    assert alphas and all(abs(a - ALPHA) < 0.3 for a in alphas)
    assert "rho=1.2 used with 1/4 seeds censored" in text.replace("controller.", "")
    assert r"median \|\|W\|\| at grok" in text  # a pipe inside a header would break the table


def test_figures_left_out_are_named_with_the_reason(tmp_path, registry):
    store = build_store(tmp_path / "store", clamp=False)
    written = write_report(store, tmp_path / "report", registry)
    text = written.path.read_text()
    assert "*Figure left out:* delay law: no sweep of `controller.rho`" in text
    assert not (tmp_path / "report" / "figures" / "delay_law.png").exists()
    assert any(item.startswith("rho x lr heatmap") for item in written.left_out)
    assert (tmp_path / "report" / "figures" / "critical_norm_vs_p.png").stat().st_size > 1000


def test_a_second_report_removes_figures_that_no_longer_apply(synthetic, tmp_path, registry):
    _, written = synthetic
    shutil.copytree(written.path.parent, tmp_path / "report")
    assert (tmp_path / "report" / "figures" / "delay_law.png").exists()
    write_report(build_store(tmp_path / "free-only", clamp=False), tmp_path / "report", registry)
    assert not (tmp_path / "report" / "figures" / "delay_law.png").exists()
    assert (tmp_path / "report" / "figures" / "critical_norm_vs_p.png").exists()


# -- the figures ------------------------------------------------------------------------------------


def _exact_group() -> DelayLawGroup:
    times = {rho: [round(math.exp(1 + ALPHA * rho) * f) for f in (0.95, 1.0, 1.05)] + [None] * (rho == 1.2)
             for rho in RHOS}
    xs = np.array(RHOS)
    medians = [np.median([t for t in times[x] if t is not None]) for x in RHOS]
    slope, intercept = np.polyfit(xs, np.log(medians), 1)
    return DelayLawGroup("(all)", times, list(RHOS), {x: BUDGET for x in RHOS}, float(slope), float(intercept), 1.0,
                         (slope - 0.1, slope + 0.1), delay_law_band(times, 200, 0.95))


def test_delay_law_figure_is_labelled_and_draws_the_fitted_line():
    group = _exact_group()
    figure = delay_law_figure([group])
    axes = figure.axes[0]
    assert "rho" in axes.get_xlabel() and "dimensionless" in axes.get_xlabel()
    assert "T_" in axes.get_ylabel() and "steps" in axes.get_ylabel() and axes.get_yscale() == "log"
    legend = axes.get_legend()
    assert legend is not None
    texts = [t.get_text() for t in legend.get_texts()]
    assert any(f"{group.alpha:.2f}" in t and "1/4 at" in t for t in texts), texts  # alpha and censoring
    fit = next(line for line in axes.get_lines() if line.get_label().startswith("fit"))
    x, y = fit.get_data()
    assert np.allclose(np.log(y), group.intercept + group.alpha * np.asarray(x))


def test_the_bootstrap_band_contains_the_fit_and_widens_with_seed_spread():
    group = _exact_group()
    grid, low, high = group.band
    line = np.exp(group.intercept + group.alpha * grid)
    assert np.all(low <= line * 1.001) and np.all(high >= line * 0.999)
    noisy = {x: [t * f for t in ts if t is not None for f in (0.5, 2.0)] for x, ts in group.times.items()}
    _, noisy_low, noisy_high = delay_law_band(noisy, 200, 0.95)
    assert np.mean(noisy_high / noisy_low) > 2 * np.mean(high / low)


def test_heatmap_writes_each_cell_with_its_grokked_count():
    median = np.array([[1500.0, 600.0], [28000.0, np.nan]])
    figure = lever_heatmap_figure([0.85, 1.3], [1e-3, 8e-3], median, np.array([[16, 16], [12, 0]]),
                                  np.array([[16, 16], [16, 16]]))
    texts = [t.get_text() for t in figure.axes[0].texts]
    assert "28,000\n12/16" in texts and "none grokked\n0/16" in texts
    assert figure.axes[0].get_xlabel() == "learning rate" and "rho" in figure.axes[0].get_ylabel()


def test_a_seed_that_stopped_at_its_t_grok_is_held_at_its_last_value():
    steps, aligned, from_mean = align_trajectories([
        {"step": [10, 20, 30, 40], "test_acc": [0.0, 0.2, 0.5, 0.6]},
        {"step": [10, 20], "test_acc": [0.1, 0.95]},
        {"step": [20, 40], "test_acc": [None, None], "seed_mean/test_acc": [0.3, 0.4]},
    ], columns=("test_acc",))
    assert steps.tolist() == [10, 20, 30, 40]
    assert aligned["test_acc"][1].tolist() == [0.1, 0.95, 0.95, 0.95]
    assert np.isnan(aligned["test_acc"][2][0]) and aligned["test_acc"][2][1:].tolist() == [0.3, 0.3, 0.4]
    assert from_mean == {"test_acc"}


def test_markdown_table_escapes_pipes_and_rounds_large_numbers():
    text = markdown_table(Table("t", ["cell", "median ||W||", "T"], [["rho=1.0", 54.51, 13030.4]]))
    header, rule, row = text.splitlines()[2:]
    assert header.count("|") - header.count(r"\|") == 4 and rule == "|---|---:|---:|"
    assert row == "| rho=1.0 | 54.51 | 13030 |"


# -- the command ------------------------------------------------------------------------------------


def test_report_command_writes_next_to_the_results_by_default(tmp_path):
    store = build_store(tmp_path / "store", clamp=False)
    result = CliRunner().invoke(main, ["report", str(store.directory)])
    assert result.exit_code == 0, result.output
    assert "2 figures (PNG and PDF), 2 left out" in result.output
    assert (tmp_path / "store" / "report" / "report.md").exists()


def test_report_on_a_directory_without_results_is_one_line_error(tmp_path):
    result = CliRunner().invoke(main, ["report", str(tmp_path / "nothing")])
    assert result.exit_code == 2
    assert result.output.count("error:") == 1 and "no gnorm results" in result.output
    assert "Traceback" not in result.output


# -- the papers' dense sweep --------------------------------------------------------------------------


@pytest.mark.skipif(not (REFERENCE / "paper-a" / "denserho").is_dir(), reason=f"no reference data at {REFERENCE}")
def test_dense_rho_sweep_report_shows_alpha_7_64(tmp_path, registry):
    store = Store(tmp_path / "denserho", create=True)
    import_reference(REFERENCE / "paper-a" / "denserho", store)
    written = write_report(store, tmp_path / "report", registry)
    text = written.path.read_text()
    assert "| (all) | 9 | 7.638 |" in text
    for path in referenced_files(written.path):
        assert path.is_file() and path.stat().st_size > 1000
    fits = delay_law_fits(store.records(), registry)
    legend = [t.get_text() for t in delay_law_figure(fits.groups).axes[0].get_legend().get_texts()]
    assert any("7.64" in t and "0.994" in t for t in legend), legend


# -- the experiment file's [[analysis]] tables -------------------------------------------------------


def test_a_delay_law_analysis_table_sets_the_fit_and_figure_of_the_report(tmp_path, registry):
    from gnorm.builtins.analyzers.delay_law import DelayLawConfig

    store = build_store(tmp_path / "store")
    within = DelayLawConfig(group_by=["task.p", "optimizer.lr"], within={"controller.rho": [0.9, 1.1]})
    written = write_report(store, tmp_path / "report", registry, [ComponentChoice("delay_law", within)])
    text = written.path.read_text()
    assert '"controller.rho": [0.9, 1.1]' in text
    fits = delay_law_fits(store.records(), registry, within)
    assert all(sorted(g.times) == [0.9, 1.0, 1.1] for g in fits.groups)  # rho 1.2 lies outside the interval
    assert len(fits.groups) == 4 and all(abs(g.alpha - ALPHA) < 0.6 for g in fits.groups)


def test_other_analysis_tables_get_their_own_section_with_their_settings(tmp_path, registry):
    from gnorm.builtins.analyzers.levers import LeversConfig

    store = build_store(tmp_path / "store")
    levers = ComponentChoice("levers", LeversConfig(within={"task.p": [59, 59]}))
    text = write_report(store, tmp_path / "report", registry, [levers]).path.read_text()
    section = text.split("## Analyses from the experiment file")[1]
    assert '### levers (within = `{"task.p": [59, 59]}`)' in section and "lever" in section


@pytest.mark.skipif(not (REFERENCE / "paper-b" / "collapse").is_dir(), reason=f"no reference data at {REFERENCE}")
def test_paper_b_collapse_report_draws_t_grok_against_the_logit_scale(tmp_path, registry):
    store = Store(tmp_path / "collapse", create=True)
    import_reference(REFERENCE / "paper-b" / "collapse", store)
    written = write_report(store, tmp_path / "report", registry)
    text = written.path.read_text()
    assert "## Logit-scale mediation" in text and "figures/logit_scale_collapse.png" in text
    assert (tmp_path / "report" / "figures" / "logit_scale_collapse.pdf").stat().st_size > 1000


# -- sections come from the analyzers -----------------------------------------------------------------


@attrs.frozen
class CountedConfig:
    label: str = "counted"


def test_each_analysis_runs_once_and_its_own_section_shows_it(tmp_path):
    calls = []

    def factory(config):
        def analyze(records):
            calls.append(config)
            return Analysis("counted", [Table("runs counted", ["runs"], [[len(records)]])])
        return analyze

    def section(config, analysis, context):
        shown = ReportSection(f"Section of {config.label}")
        shown.analysis(analysis)
        return shown

    plugin = types.ModuleType("counted_plugin")
    plugin.gnorm_analyzers = gnorm.hookimpl(lambda: [gnorm.Analyzer(
        name="counted", summary="counts runs", config_class=CountedConfig, factory=factory, report=section)])
    registry = build_registry([(plugin, Provider("counted-plugin", "1.0"))])
    store = build_store(tmp_path / "store", clamp=False)
    choices = [ComponentChoice("counted", CountedConfig("the file"))]
    ran = run_report_analyses(store.records(), registry, choices)  # what gnorm run's summary prints
    text = write_report(store, tmp_path / "report", registry, choices, ran).path.read_text()
    assert calls == [CountedConfig("the file")]
    assert "## Section of the file" in text and "| 12 |" in text.split("## Section of the file")[1]


def test_the_wc_figure_draws_the_analyzers_one_power_law(synthetic, registry):
    store, written = synthetic
    analyzer = registry.get("analyzer", "critical_norm")
    power_law = analyzer.factory(analyzer.config_class())(store.records()).numbers["power_law"]
    text = written.path.read_text()
    assert f"Wc ~ p^{power_law['exponent']:.3f} (R^2 {power_law['r_squared']:.3f})" in text
