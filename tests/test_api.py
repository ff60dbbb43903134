"""gnorm from Python: gnorm.open(...).runs() / .evaluations() / .analyze(...) read what the command line
reads, and gnorm.run(...) takes a file or a dict through the same checks as gnorm run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from builders import FREE, clamp_stage, experiment_data, write_study
from conftest import ROOT

import gnorm
from gnorm.cli import main
from gnorm.errors import UserError
from gnorm.store import Store

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

#: A free stage that groks in a few hundred steps (p = 67) and a clamp stage far below Wc that trains
#: only 60 steps, so its runs are censored.
STUDY = experiment_data(experiment={"seeds": 2}, training={"max_steps": 500},
                        stages=[FREE, {**clamp_stage(30.0, rhos=(0.9,), t_start=20), "training": {"max_steps": 60}}])


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """STUDY trained once, from a dict, through gnorm.run."""
    out = tmp_path_factory.mktemp("api") / "results"
    results = gnorm.run(STUDY, out=out, executor="serial")
    assert isinstance(results, gnorm.Results)
    results.close()
    return out


def invoke(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def test_import_gnorm_reaches_open_and_run_without_importing_torch_or_pandas():
    probe = ("import sys, gnorm; gnorm.open; gnorm.run; gnorm.Results; "
             "print(sorted(m for m in ('torch', 'pandas') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_runs_has_one_typed_row_per_stored_run_with_the_config_as_dotted_columns(study):
    pandas = pytest.importorskip("pandas", reason="Results.runs() needs pandas (gnorm[pandas])")
    records = {r.run_id: r for r in Store(study, read_only=True).records()}
    with gnorm.open(study) as results:
        runs = results.runs()
    assert list(runs["run_id"]) == list(records)
    assert runs["censored"].dtype == bool
    assert str(runs["t_grok"].dtype) == "Int64" and str(runs["t_mem"].dtype) == "Int64"
    assert runs["norm_at_grok"].dtype == "float64"
    assert runs["budget"].dtype == "int64" and runs["task.p"].dtype == "int64"
    assert runs["architecture.final_layernorm"].dtype == bool
    for row in runs.itertuples(index=False):
        record = records[row.run_id]
        assert row.censored == record.censored
        assert (row.t_grok is pandas.NA) == record.censored
        if not record.censored:
            assert row.t_grok == record.t_grok
    by_stage = runs.set_index("run_id")
    assert set(by_stage["task.p"]) == {67}
    assert set(by_stage["optimizer.lr"]) == {1e-2}
    clamp = by_stage[by_stage["stage"] == "clamp"]
    assert set(clamp["controller.rho"]) == {0.9} and set(clamp["cell"]) == {"rho=0.9"}
    assert clamp["censored"].all()  # 60 steps far below Wc
    assert pandas.isna(by_stage.loc[by_stage["stage"] == "free", "controller.rho"]).all()
    assert (clamp["facts.held_norm"] == 27.0).all()  # rho * Wc
    assert set(runs["status"]) == {"done"}


def test_evaluations_is_one_row_per_run_and_step_and_joins_the_runs_on_run_id(study):
    pytest.importorskip("pandas", reason="Results.evaluations() needs pandas (gnorm[pandas])")
    store = Store(study, read_only=True)
    with gnorm.open(study) as results:
        evaluations, runs = results.evaluations(), results.runs()
    lengths = {r.run_id: len(store.trajectory(r.run_id)["step"]) for r in store.records()}
    assert len(evaluations) == sum(lengths.values())
    assert evaluations.groupby("run_id").size().to_dict() == lengths
    assert evaluations["step"].dtype == "int64" and evaluations["test_acc"].dtype == "float64"
    assert all(group["step"].is_monotonic_increasing for _, group in evaluations.groupby("run_id"))
    joined = evaluations.merge(runs[["run_id", "stage", "controller.rho"]], on="run_id", validate="many_to_one")
    assert len(joined) == len(evaluations)
    first = store.records()[0].run_id
    assert list(evaluations.loc[evaluations["run_id"] == first, "test_acc"]) == store.trajectory(first)["test_acc"]


def test_analyze_gives_the_numbers_gnorm_analyze_prints_with_the_same_options(study):
    cli = invoke("analyze", study, "--analyzer", "critical_norm", "--set", 'stages=["free"]', "--json", "-")
    assert cli.exit_code == 0, cli.output
    printed = json.loads(cli.stdout)
    with gnorm.open(study) as results:
        analysis = results.analyze("critical_norm", stages=["free"])
        delay = results.analyze("delay_law")
    assert [entry["analyzer"] for entry in printed] == ["critical_norm"]
    assert analysis.numbers and json.loads(json.dumps(analysis.numbers, default=str)) == printed[0]["numbers"]
    assert analysis.notes == printed[0]["notes"]
    cli_delay = json.loads(invoke("analyze", study, "--analyzer", "delay_law", "--json", "-").stdout)
    assert json.loads(json.dumps(delay.numbers, default=str)) == cli_delay[0]["numbers"]


def test_analyze_checks_options_as_an_analysis_table_would_naming_the_option(study):
    calls = [(("delay_law",), {"min_cells": "three"}, "analyze: delay_law.min_cells: expected an integer"),
             (("delay_law",), {"min_cells": 1}, "analyze: delay_law.min_cells: 'min_cells' must be at least 2"),
             (("delay_law",), {"min_cell": 2}, "analyze: delay_law.min_cell: unknown key (did you mean 'min_cells'?)"),
             (("critical_norm",), {"stages": ["fre"]}, "analyze: critical_norm.stages[0]: no stage of this file is "
                                                      "named 'fre' (did you mean 'free'?)"),
             (("delay_law",), {"x": "controller.rh"}, "analyze: delay_law.x: no run of this file has the key "
                                                     "'controller.rh' (did you mean 'controller.rho'?)"),
             (("delay_laws",), {}, "analyze: unknown analyzer 'delay_laws'")]
    with gnorm.open(study) as results:
        for args, options, line in calls:
            with pytest.raises(UserError) as refused:
                results.analyze(*args, **options)
            assert str(refused.value).startswith(line), str(refused.value)


def test_open_refuses_what_is_not_a_store_with_the_line_gnorm_show_prints(tmp_path):
    for directory in (tmp_path / "missing", tmp_path):
        with pytest.raises(UserError) as refused:
            gnorm.open(directory)
        shown = invoke("show", directory)
        assert shown.exit_code == 2
        assert shown.stderr.strip() == f"error: {refused.value}"


def test_results_reports_its_stages_and_repr_and_opening_creates_no_file(study):
    before = sorted(p.name for p in study.iterdir())
    with gnorm.open(study) as results:
        assert results.stages == ["free", "clamp"]
        assert repr(results) == f"<gnorm.Results {str(study)!r}: 4/4 runs finished, stages ['free', 'clamp']>"
        assert len(results.records()) == 4
    assert sorted(p.name for p in study.iterdir()) == before


def test_running_again_resumes_training_nothing_already_stored(study):
    stored = dict(Store(study, read_only=True).connection.execute("SELECT run_id, finished_at FROM runs"))
    results = gnorm.run(STUDY, out=study, executor="serial")
    again = dict(Store(study, read_only=True).connection.execute("SELECT run_id, finished_at FROM runs"))
    assert again == stored
    assert len(results.records()) == len(stored) == 4


def test_a_dict_and_the_file_it_stands_for_plan_the_same_runs(tmp_path):
    from gnorm.registry import default_registry
    from gnorm.studies import load

    registry = default_registry()
    path = write_study(tmp_path, stages=[FREE, clamp_stage(rhos=(0.8, 1.2))])
    from_file = load(path, registry, {"task.p": 59})
    from_dict = load(tomllib.loads(path.read_text()), registry, {"task.p": 59})
    assert [r.run_id for r in from_dict.runs] == [r.run_id for r in from_file.runs]
    assert tomllib.loads(from_dict.text) == tomllib.loads(path.read_text())
    assert str(from_dict.source) == "<dict>"


def test_bad_input_to_run_is_the_loaders_line_naming_the_dict_or_the_overrides_and_writes_nothing(tmp_path):
    out = tmp_path / "results"
    cases = [
        (experiment_data(task={"p": "large"}), None, "<dict>: task.p: expected an integer, found a string"),
        (experiment_data(task={"pp": 5}), None, "<dict>: task.pp: unknown key (did you mean 'p'?)"),
        (experiment_data(), {"task.p": "large"}, "--set: task.p: expected an integer, found a string"),
        ({**experiment_data(), "task": {"name": "modular_addition", "p": None}}, None,
         "<dict>: task.p: a NoneType (null) has no TOML form"),
        (["not", "a", "dict"], None, "experiment: expected a path or a dict, found a list"),
        (experiment_data(), ["task.p=5"], "overrides: expected a dict of dotted keys and values"),
    ]
    for experiment, overrides, line in cases:
        with pytest.raises(UserError) as refused:
            gnorm.run(experiment, out=out, overrides=overrides, executor="serial")
        assert str(refused.value).startswith(line), str(refused.value)
    with pytest.raises(UserError) as missing:
        gnorm.run(tmp_path / "absent.toml", out=out)
    assert str(missing.value).startswith(f"{tmp_path / 'absent.toml'}: cannot read the file")
    assert not out.exists()


def test_the_frames_say_how_to_get_pandas_where_it_is_missing(study, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # `import pandas` now fails as if it were not installed
    with gnorm.open(study) as results:
        for method in (results.runs, results.evaluations):
            with pytest.raises(ImportError, match=r"pip install 'gnorm\[pandas\]'"):
                method()


def test_toml_document_reads_back_as_the_data_it_was_written_from():
    from gnorm.toml_text import toml_document

    data = {**experiment_data(stages=[FREE, clamp_stage(rhos=(0.9, 1.1))]), "zip": {"task.p": [31, 59]},
            "executor": {"name": "local", "retries": 1}}
    data["stage"][1]["note"] = 'a "quoted" \\ value'
    data["experiment"]["limits"] = [float("inf"), -1.5, True]
    assert tomllib.loads(toml_document(data)) == data


def test_on_the_released_0_1_0_store_analyze_gives_what_gnorm_analyze_prints_from_the_stored_file():
    release = ROOT / "tests" / "fixtures" / "release-0.1.0"
    printed = invoke("analyze", release, "--json", "-")  # the stored file's [[analysis]]: delay_law, min_grokked 2
    assert printed.exit_code == 0, printed.output
    with gnorm.open(release) as results:
        analysis = results.analyze("delay_law", min_grokked=2)
        count = len(results.records())
    assert [entry["analyzer"] for entry in json.loads(printed.stdout)] == ["delay_law"]
    assert json.loads(json.dumps(analysis.numbers, default=str)) == json.loads(printed.stdout)[0]["numbers"]
    pytest.importorskip("pandas", reason="Results.runs() needs pandas (gnorm[pandas])")
    with gnorm.open(release) as results:
        assert len(results.runs()) == count
