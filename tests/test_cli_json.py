"""The command line's output habits: ``--json -`` writes JSON to standard output (the text for people
to standard error), ``gnorm show --json``, ``gnorm analyze --set`` for analyzer options (its problems
name ``--set``, as ``gnorm run --set``'s do), and ``gnorm export --format parquet``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from builders import FREE, clamp_stage, write_study

from gnorm.cli import main
from gnorm.components import RunRecord
from gnorm.store import Store


def invoke(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    """A store written directly: free cells p = 41, 59 (3 seeds, T_grok 3000 + 500 * seed, one seed of
    p = 59 censored) and a clamp stage at rho 0.9, 1.1 on p = 41."""
    directory = tmp_path_factory.mktemp("cli_json") / "results"
    store = Store(directory, create=True)
    plan = []
    for stage, cells in (("free", [{"task.p": 41}, {"task.p": 59}]),
                         ("clamp", [{"controller.rho": 0.9}, {"controller.rho": 1.1}])):
        for cell in cells:
            for seed in range(3):
                p = cell.get("task.p", 41)
                rho = cell.get("controller.rho")
                t_grok = None if (p, seed) == (59, 2) else int(3000 * (rho or 1) ** 2) + 500 * seed
                run_id = f"{stage}-{'-'.join(str(v) for v in cell.values())}-s{seed}"
                controller = {"name": "free"} if rho is None else {"name": "clamp", "rho": rho, "t_start": 100}
                record = RunRecord(run_id=run_id, stage=stage, cell=cell, seed=seed,
                                   config={"stage": stage, "seed": seed, "task": {"name": "modular_addition", "p": p},
                                           "controller": controller, "optimizer": {"lr": 1e-3}},
                                   t_mem=300, t_grok=t_grok, norm_at_grok=None if t_grok is None else 10.0 + p / 10,
                                   budget=10_000, facts={} if rho is None else {"held_norm": rho * 14.1})
                steps = list(range(100, (t_grok or 10_000) + 1, 100))
                s = np.array(steps, float)
                test_acc = (s >= (t_grok or 1e9)).astype(float)
                metrics = {"train_loss": np.exp(-s / 300), "test_loss": 1 - test_acc, "train_acc": np.minimum(s / 300, 1),
                           "test_acc": test_acc, "weight_norm": np.full(s.size, 10.0 + p / 10)}
                store.write_run(record, steps, {key: [float(v) for v in values] for key, values in metrics.items()})
                plan.append((run_id, stage, cell))
    store.set_plan("study.toml", "", plan)
    store.close()
    return directory


def test_show_json_dash_writes_the_tables_and_counts_to_stdout_and_the_text_to_stderr(store_dir):
    text = invoke("show", store_dir)
    shown = invoke("show", store_dir, "--json", "-")
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.stdout)
    assert shown.stderr == text.stdout  # the same text as without --json, moved to stderr
    assert [table["title"] for table in data["stages"]] == ["stage free (controller free)",
                                                            "stage clamp (controller clamp)"]
    free = {row[0]: row for row in data["stages"][0]["rows"]}
    assert free["p=59"][1] == "2/3" and free["p=41"][3] == 3500
    assert (data["planned"], data["finished"], data["failed_count"], data["to_run"]) == (12, 12, 0, 0)


def test_show_json_to_a_file_keeps_the_text_on_stdout(store_dir, tmp_path):
    shown = invoke("show", store_dir, "--json", tmp_path / "show.json")
    assert shown.exit_code == 0, shown.output
    assert "12/12 planned runs finished" in shown.stdout
    assert json.loads((tmp_path / "show.json").read_text())["finished"] == 12
    refused = invoke("show", store_dir, "--json", tmp_path / "no" / "show.json")
    assert refused.exit_code == 2
    assert refused.stderr.strip() == (f"error: --json: {tmp_path / 'no' / 'show.json'}: cannot write here: its "
                                      "directory does not exist")


def test_plugins_json_goes_to_stdout_alone_or_with_dash(tmp_path):
    alone, dash = invoke("plugins", "--json"), invoke("plugins", "--json", "-")
    assert alone.exit_code == dash.exit_code == 0, alone.output + dash.output
    assert json.loads(alone.stdout) == json.loads(dash.stdout)
    assert "delay_law" in {c["name"] for c in json.loads(dash.stdout)["components"]}
    to_file = invoke("plugins", "--json", tmp_path / "plugins.json")
    assert to_file.exit_code == 0 and to_file.stdout == ""
    assert json.loads((tmp_path / "plugins.json").read_text()) == json.loads(dash.stdout)


def test_analyze_set_gives_an_analyzer_its_options(store_dir):
    default = json.loads(invoke("analyze", store_dir, "--analyzer", "delay_law", "--json", "-").stdout)
    by_norm = invoke("analyze", store_dir, "--analyzer", "delay_law", "--set", "x=held_norm", "--json", "-")
    assert by_norm.exit_code == 0, by_norm.output
    assert default[0]["numbers"]["x"] == "controller.rho"
    assert json.loads(by_norm.stdout)[0]["numbers"]["x"] == "held_norm"
    assert "delay law" in by_norm.stderr.lower()  # the tables, on stderr


def test_analyze_set_with_several_analyzers_takes_name_dot_key(store_dir):
    both = invoke("analyze", store_dir, "--analyzer", "critical_norm", "--analyzer", "delay_law",
                  "--set", "delay_law.x=held_norm", "--set", 'critical_norm.stages=["free"]', "--json", "-")
    assert both.exit_code == 0, both.output
    numbers = {entry["analyzer"]: entry["numbers"] for entry in json.loads(both.stdout)}
    assert numbers["delay_law"]["x"] == "held_norm"
    bare = invoke("analyze", store_dir, "--analyzer", "critical_norm", "--analyzer", "delay_law", "--set", "x=held_norm")
    assert bare.exit_code == 2
    assert bare.stderr.strip() == ("error: --set: x: 2 analyzers run (critical_norm, delay_law): write NAME.x, e.g. "
                                   "--set critical_norm.x=...")


@pytest.mark.parametrize("setting, line", [
    ("min_cells=two", "error: --set: delay_law.min_cells: expected an integer, found a string (\"two\")"),
    ("min_cell=2", "error: --set: delay_law.min_cell: unknown key (did you mean 'min_cells'?)"),
    ("x=controller.rh", "error: --set: delay_law.x: no run of this file has the key 'controller.rh' (did you mean "
                        "'controller.rho'?)"),
    ("stages=[\"fre\"]", "error: --set: delay_law.stages[0]: no stage of this file is named 'fre' (did you mean "
                         "'free'?) (stages: free, clamp)"),
    ("min_cells", "error: --set: min_cells: expected key=value"),
])
def test_a_bad_analyze_set_value_is_one_line_naming_the_command_line(store_dir, setting, line):
    refused = invoke("analyze", store_dir, "--analyzer", "delay_law", "--set", setting)
    assert refused.exit_code == 2
    assert refused.stderr.strip() == line
    assert "Traceback" not in refused.output


def test_a_bad_run_set_value_names_the_command_line_not_the_file(tmp_path):
    study = write_study(tmp_path, stages=[FREE, clamp_stage(30.0)])
    refused = invoke("run", study, "--set", "task.p=large", "--set", "optimizer.lrr=0.1", "--dry-run")
    assert refused.exit_code == 2
    assert refused.stderr.strip().splitlines() == [
        'error: --set: task.p: expected an integer, found a string ("large")',
        "error: --set: optimizer.lrr: unknown key (did you mean 'lr'?)"]


def test_export_parquet_holds_the_rows_of_the_csv_export(store_dir, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet", reason="gnorm export --format parquet needs pyarrow")
    import csv

    for fmt in ("csv", "parquet"):
        done = invoke("export", store_dir, "--format", fmt, "--out", tmp_path / fmt)
        assert done.exit_code == 0, done.output
    for name in ("runs", "evaluations"):
        table = pq.read_table(tmp_path / "parquet" / f"{name}.parquet")
        with open(tmp_path / "csv" / f"{name}.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert table.num_rows == len(rows) and table.column_names == list(rows[0])
    runs = pq.read_table(tmp_path / "parquet" / "runs.parquet").to_pylist()
    assert str(pq.read_table(tmp_path / "parquet" / "runs.parquet").schema.field("t_grok").type) == "int64"
    censored = [row for row in runs if row["censored"]]
    assert [row["run_id"] for row in censored] == ["free-59-s2"] and censored[0]["t_grok"] is None


def test_export_parquet_without_pyarrow_is_one_line_naming_format(store_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` now fails as if it were not installed
    refused = invoke("export", store_dir, "--format", "parquet", "--out", tmp_path / "out")
    assert refused.exit_code == 2
    assert refused.stderr.strip() == ("error: --format: parquet: needs pyarrow, which is not installed here: pip "
                                      "install 'gnorm[parquet]' (or choose --format csv or json)")
    assert not (tmp_path / "out").exists()
