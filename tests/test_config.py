"""Experiment files: strict structuring, one line per problem, sweeps, seeds, --set, matched seeds.

Nothing here trains: every check goes through ``load_experiment``, ``gnorm validate`` or
``gnorm run --dry-run``.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
from click.testing import CliRunner

import gnorm
import gnorm.cli
import gnorm.registry
from gnorm.cli import main
from gnorm.errors import Problem, UserError
from gnorm.executor_table import with_executor
from gnorm.loader import load_experiment
from gnorm.planner import plan_experiment
from gnorm.registry import DISABLE_AUTOLOAD_ENV, Provider, build_registry

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "examples" / "quickstart.toml"
#: gnorm's own components only: these checks must not depend on which third-party plugins are installed.
BUILTINS = build_registry(autoload=False)


@pytest.fixture(autouse=True)
def _builtin_plugins_only(monkeypatch):
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    monkeypatch.setattr(gnorm.registry, "default_registry", lambda: BUILTINS)

STUDY = """\
[experiment]
name = "study"
seeds = 2

[task]
name = "modular_addition"
p = 97

[architecture]
name = "mlp"
embed_dim = 16
hidden_dim = 32

[[stage]]
name = "free"

[[stage]]
name = "clamp"
critical_norm = "free"
controller = { name = "clamp", t_start = 100 }
sweep = { "controller.rho" = [0.9, 1.1] }
"""
FIRST_STAGE = '[[stage]]\nname = "free"\n'


def edited(text: str, *replacements: tuple[str, str]) -> str:
    """``text`` with each (old, new) replaced; each ``old`` must occur exactly once."""
    for old, new in replacements:
        assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times"
        text = text.replace(old, new)
    return text


def write(tmp_path: Path, text: str, name: str = "study.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def invoke(*args: object):
    """Run the CLI in-process; any exception other than the CLI's own exit is a test failure."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    return result


def error_lines(result) -> list[str]:
    """The lines a refused input printed: exit status 2, nothing on stdout, only ``error:`` lines."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines and all(line.startswith("error: ") for line in lines), result.stderr
    assert "Traceback" not in result.output
    return lines


def problems_of(path: Path, registry=None, overrides=None) -> list[str]:
    with pytest.raises(UserError) as raised:
        load_experiment(path, registry or BUILTINS, overrides)
    return [str(problem) for problem in raised.value.problems]


def load(path: Path, overrides=None, registry=None):
    return load_experiment(path, registry or BUILTINS, overrides)


# ---------------------------------------------------------------------------------------------------
# Each kind of malformed input: one line with the file and dotted key, exit 2, no traceback.


def test_a_valid_file_validates_without_running(tmp_path):
    path = write(tmp_path, STUDY)
    result = invoke("validate", path)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{path}: ok, 6 runs in 3 cells, 2 stages\n"


def test_wrong_type_is_one_line_with_file_and_dotted_key(tmp_path):
    path = write(tmp_path, edited(STUDY, ("p = 97", "p = 1.7")))
    assert error_lines(invoke("validate", path)) == [
        f"error: {path}: task.p: expected an integer, found a float (1.7)"]


def test_a_base_section_problem_is_one_line_although_every_run_inherits_it(tmp_path):
    path = write(tmp_path, edited(STUDY, ("hidden_dim = 32", "hidden_dim = 32\nfinal_layernorm = 1")))
    assert error_lines(invoke("run", "--dry-run", path)) == [
        f"error: {path}: architecture.final_layernorm: expected true or false, found an integer (1)"]


def test_unknown_key_is_rejected_with_the_nearest_valid_key(tmp_path):
    path = write(tmp_path, edited(STUDY, ("hidden_dim = 32", "hiden_dim = 32")))
    assert error_lines(invoke("validate", path)) == [
        f"error: {path}: architecture.hiden_dim: unknown key (did you mean 'hidden_dim'?)"]


@pytest.mark.parametrize("old, new, line", [
    ("[task]", "[tsk]\nx = 1\n\n[task]", "tsk: unknown key (did you mean 'task'?)"),
    ("seeds = 2", "seeds = 2\nseed = 3", "experiment.seed: unknown key (did you mean 'seeds'?)"),
    ('critical_norm = "free"', 'critical_norm = "free"\ncritcal_norm = 1.0',
     "stage[clamp].critcal_norm: unknown key (did you mean 'critical_norm'?)"),
    ("t_start = 100", "t_start = 100, t_strat = 5",
     "stage[clamp].controller.t_strat: unknown key (did you mean 't_start'?)"),
])
def test_unknown_keys_are_rejected_at_every_level(tmp_path, old, new, line):
    path = write(tmp_path, edited(STUDY, (old, new)))
    assert error_lines(invoke("validate", path)) == [f"error: {path}: {line}"]


def test_unknown_component_name_lists_the_known_ones_and_suggests_the_nearest(tmp_path):
    path = write(tmp_path, edited(STUDY, ('{ name = "clamp"', '{ name = "clamb"')))
    [line] = error_lines(invoke("validate", path))
    prefix = f"error: {path}: stage[clamp].controller.name: unknown norm_controller 'clamb' (did you mean 'clamp'?); known: "
    assert line.startswith(prefix)
    known = line[len(prefix):].split(", ")
    assert known == sorted(BUILTINS.names("norm_controller")) and {"clamp", "free"} <= set(known)


def test_missing_required_tables_and_keys_are_named(tmp_path):
    text = edited(STUDY, ('name = "study"\n', ""), ('name = "modular_addition"\n', ""),
                  ('[architecture]\nname = "mlp"\nembed_dim = 16\nhidden_dim = 32\n', ""))
    path = write(tmp_path, text)
    assert error_lines(invoke("validate", path)) == [
        f"error: {path}: experiment.name: required key is missing",
        f"error: {path}: task.name: required key is missing (which task to use)",
        f"error: {path}: architecture: required table is missing",
    ]


def test_broken_toml_is_one_line_with_the_file_and_position(tmp_path):
    path = write(tmp_path, edited(STUDY, ("[task]", "[task")))
    [line] = error_lines(invoke("validate", path))
    assert line.startswith(f"error: {path}: not valid TOML: ")
    assert "line 5" in line


def test_a_missing_file_is_one_line(tmp_path):
    path = tmp_path / "absent.toml"
    assert error_lines(invoke("validate", path)) == [f"error: {path}: cannot read the file: No such file or directory"]


def test_several_problems_are_reported_together_one_line_each(tmp_path):
    text = edited(STUDY, ("p = 97", "p = 1.7"), ("hidden_dim = 32", "hiden_dim = 32"),
                  ('{ name = "clamp"', '{ name = "clamb"'), ("seeds = 2", "seeds = 2\n\n[training]\ndevice = 3"),
                  (FIRST_STAGE, '[criterion]\nname = "test_acuracy"\n\n' + FIRST_STAGE))
    path = write(tmp_path, text)
    lines = error_lines(invoke("validate", path))
    keys = [line.split(": ")[2] for line in lines]
    assert sorted(keys) == sorted(["task.p", "architecture.hiden_dim", "stage[clamp].controller.name", "training.device",
                                   "criterion.name"])
    assert all(line.startswith(f"error: {path}: ") for line in lines)


def test_refused_inputs_never_print_a_traceback(tmp_path):
    """The installed command, not the in-process runner: exit 2 and only ``error:`` lines on stderr."""
    bad = write(tmp_path, edited(STUDY, ("p = 97", "p = 1.7"), ("hidden_dim = 32", "hiden_dim = 32")))
    broken = write(tmp_path, "[task\n", name="broken.toml")
    for args in (["validate", bad], ["validate", broken], ["run", "--dry-run", bad],
                 ["run", "--dry-run", QUICKSTART, "--set", "task.p.x=1", "--set", "stage.9.seeds=1"]):
        done = subprocess.run([sys.executable, "-m", "gnorm.cli", *map(str, args)], capture_output=True, text=True,
                              timeout=60, cwd=ROOT, env={**os.environ, DISABLE_AUTOLOAD_ENV: "1"})
        assert done.returncode == 2, (args, done.stderr)
        assert done.stdout == ""
        assert "Traceback" not in done.stderr
        lines = done.stderr.splitlines()
        assert lines and all(line.startswith("error: ") for line in lines), done.stderr
    assert len(lines) == 2  # the last command: one line for each bad --set


# ---------------------------------------------------------------------------------------------------
# Strict types.


@pytest.mark.parametrize("old, new, line", [
    ("p = 97", "p = 1.7", "task.p: expected an integer, found a float (1.7)"),
    ("p = 97", "p = 97.0", "task.p: expected an integer, found a float (97.0)"),
    ("p = 97", 'p = "97"', 'task.p: expected an integer, found a string ("97")'),
    ("hidden_dim = 32", 'hidden_dim = 32\nfinal_layernorm = "no"',
     'architecture.final_layernorm: expected true or false, found a string ("no")'),
    ("seeds = 2", "seeds = 2\n\n[optimizer]\nlr = true", "optimizer.lr: expected a number, found a boolean (true)"),
    ("seeds = 2", "seeds = 2\n\n[training]\ndevice = 3", "training.device: expected a string, found an integer (3)"),
])
def test_values_of_the_wrong_type_are_refused_not_coerced(tmp_path, old, new, line):
    path = write(tmp_path, edited(STUDY, (old, new)))
    assert problems_of(path) == [f"{path}: {line}"]


def test_an_integer_in_a_float_field_is_accepted_as_a_float(tmp_path):
    path = write(tmp_path, edited(STUDY, ("seeds = 2", "seeds = 2\n\n[optimizer]\nlr = 1\n\n"
                                                       '[criterion]\nname = "test_accuracy"\nthreshold = 1'),
                                  ("[0.9, 1.1]", "[1, 2]")))
    experiment = load(path)
    assert {(type(run.optimizer.config.lr), run.optimizer.config.lr) for run in experiment.runs} == {(float, 1.0)}
    assert {(type(run.criterion.config.threshold), run.criterion.config.threshold) for run in experiment.runs} == \
        {(float, 1.0)}
    clamp = [run for run in experiment.runs if run.stage == "clamp"]
    assert sorted((type(run.controller.config.rho), run.controller.config.rho) for run in clamp) == \
        [(float, 1.0), (float, 1.0), (float, 2.0), (float, 2.0)]


@pytest.mark.parametrize("old, new, line", [
    ("seeds = 2", 'seeds = 2\n\n[training]\nprecision = "float16"',
     "training.precision: expected one of 'float32', 'float64', found 'float16'"),
    ("seeds = 2", "seeds = 2\n\n[evaluation]\nevery = 0", "evaluation.every: 'every' must be > 0: 0"),
    ("seeds = 2", "seeds = 2\n\n[training]\nmax_steps = -5", "training.max_steps: 'max_steps' must be > 0: -5"),
    ("p = 97", "p = 1", "task.p: 'p' must be at least 2, found 1"),
    ("seeds = 2", 'seeds = 2\n\n[training]\nmatmul_precision = "float16"',
     "training.matmul_precision: expected one of 'full', 'bfloat16', 'tensorfloat32', found 'float16'"),
    ("seeds = 2", 'seeds = 2\n\n[training]\nprecision = "float64"\nmatmul_precision = "bfloat16"',
     "training.matmul_precision: 'bfloat16' applies to float32 matmuls; with precision = 'float64' use \"full\""),
    ("seeds = 2", 'seeds = 2\n\n[training]\nmatmul_precision = "tensorfloat32"',
     "training.matmul_precision: 'tensorfloat32' is computed on one kind of device: set training.device to cuda "
     "(auto may pick another on a worker)"),
])
def test_values_out_of_range_are_refused_under_their_key(tmp_path, old, new, line):
    path = write(tmp_path, edited(STUDY, (old, new)))
    assert problems_of(path) == [f"{path}: {line}"]


# ---------------------------------------------------------------------------------------------------
# Errors inside stages and sweeps say where they were written.


def test_errors_in_a_stage_override_are_reported_under_the_stage(tmp_path):
    path = write(tmp_path, edited(STUDY, ("t_start = 100", 't_start = "soon"'),
                                  ('name = "free"', 'name = "free"\narchitecture = { hiden_dim = 8 }')))
    assert sorted(problems_of(path)) == sorted([
        f'{path}: stage[clamp].controller.t_start: expected an integer, found a string ("soon")',
        f"{path}: stage[free].architecture.hiden_dim: unknown key (did you mean 'hidden_dim'?)",
    ])


def test_errors_in_a_sweep_list_are_reported_under_the_sweep_key_and_index(tmp_path):
    path = write(tmp_path, edited(STUDY, ("[0.9, 1.1]", '[0.9, "high", -1.0]')))
    assert problems_of(path) == [
        f'{path}: stage[clamp].sweep."controller.rho"[1]: expected a number, found a string ("high")',
        f"{path}: stage[clamp].sweep.\"controller.rho\"[2]: 'rho' must be positive, found -1.0",
    ]


def test_errors_in_a_file_wide_sweep_are_reported_under_that_sweep(tmp_path):
    path = write(tmp_path, edited(STUDY, (FIRST_STAGE, '[sweep]\n"task.p" = [59, 1.5]\n\n' + FIRST_STAGE)))
    assert problems_of(path) == [f'{path}: sweep."task.p"[1]: expected an integer, found a float (1.5)']


def test_a_swept_unknown_key_is_one_line_not_one_per_value(tmp_path):
    path = write(tmp_path, edited(STUDY, ('"controller.rho"', '"controller.rhoo"')))
    assert problems_of(path) == [f"{path}: stage[clamp].sweep.\"controller.rhoo\": unknown key (did you mean 'rho'?)"]


def test_sweeping_an_unknown_section_is_an_error(tmp_path):
    path = write(tmp_path, edited(STUDY, ('"controller.rho"', '"controler.rho"')))
    [problem] = problems_of(path)
    assert problem.startswith(f'{path}: stage[clamp].sweep."controler.rho": cannot sweep \'controler.rho\'')
    assert problem.endswith("(did you mean 'controller'?)")


def test_sweeping_into_a_value_that_is_not_a_table_is_an_error_not_a_crash(tmp_path):
    path = write(tmp_path, edited(STUDY, ('controller = { name = "clamp", t_start = 100 }', 'controller = "clamp"')))
    assert problems_of(path) == [
        f'{path}: stage[clamp].sweep."controller.rho": cannot sweep this key: controller is a string ("clamp"), '
        "not a table",
        f'{path}: stage[clamp].controller: expected a table, found a string ("clamp")',
    ]


# ---------------------------------------------------------------------------------------------------
# A component's table is structured with that plugin's own config class.


@attrs.frozen
class NeedsWidthConfig:
    width: float  # no default: required
    label: str = "plain"


class NeedsWidthPlugin:
    @staticmethod
    @gnorm.hookimpl
    def gnorm_norm_controllers():
        return [gnorm.NormController(name="needs_width", summary="test controller with a required key",
                                     config_class=NeedsWidthConfig, factory=lambda config, context: None)]


@pytest.fixture(scope="module")
def registry_with_required_key():
    return build_registry(extra_plugins=[(NeedsWidthPlugin, Provider("test-pkg", "0"))], autoload=False)


NEEDS_WIDTH = edited(STUDY, ('name = "free"', 'name = "free"\ncontroller = { name = "needs_width", width = 2 }'))


def test_a_component_table_is_structured_with_its_plugins_config_class(tmp_path, registry_with_required_key):
    experiment = load(write(tmp_path, NEEDS_WIDTH), registry=registry_with_required_key)
    free = [run for run in experiment.runs if run.stage == "free"]
    assert {run.controller.config for run in free} == {NeedsWidthConfig(width=2.0)}


def test_a_missing_required_key_of_a_plugin_config_is_named(tmp_path, registry_with_required_key):
    path = write(tmp_path, edited(NEEDS_WIDTH, (", width = 2", ', label = "x"')))
    assert problems_of(path, registry_with_required_key) == [
        f"{path}: stage[free].controller.width: required key is missing"]


def test_a_missing_required_key_in_a_base_section_is_named(tmp_path, registry_with_required_key):
    text = edited(STUDY, (FIRST_STAGE, '[controller]\nname = "needs_width"\n\n' + FIRST_STAGE))
    path = write(tmp_path, text)
    assert problems_of(path, registry_with_required_key) == [f"{path}: controller.width: required key is missing"]


def test_validate_reports_a_missing_plugin_key_with_exit_2(tmp_path, registry_with_required_key, monkeypatch):
    monkeypatch.setattr(gnorm.registry, "default_registry", lambda: registry_with_required_key)
    path = write(tmp_path, edited(NEEDS_WIDTH, (", width = 2", "")))
    assert error_lines(invoke("validate", path)) == [f"error: {path}: stage[free].controller.width: required key is missing"]


# ---------------------------------------------------------------------------------------------------
# Expansion: sweeps, zips and seeds.


def _cells(experiment, *keys):
    return [tuple(run.cell[key] for key in keys) for run in experiment.runs]


def test_a_grid_sweep_runs_the_product_of_its_lists(tmp_path):
    path = write(tmp_path, edited(STUDY, ('"controller.rho" = [0.9, 1.1]',
                                          '"controller.rho" = [0.9, 1.1], "optimizer.lr" = [1e-3, 3e-3, 1e-2]')))
    clamp = [run for run in load(path).runs if run.stage == "clamp"]
    assert len(clamp) == 2 * 3 * 2
    expected = set(itertools.product([0.9, 1.1], [1e-3, 3e-3, 1e-2], [0, 1]))
    assert {(run.controller.config.rho, run.optimizer.config.lr, run.seed) for run in clamp} == expected
    assert {(run.cell["controller.rho"], run.cell["optimizer.lr"]) for run in clamp} == \
        {(run.controller.config.rho, run.optimizer.config.lr) for run in clamp}


def test_a_zip_pairs_its_lists_in_step(tmp_path):
    path = write(tmp_path, edited(STUDY, ('name = "free"', 'name = "free"\nzip = { "task.p" = [59, 97, 113], '
                                                           '"optimizer.lr" = [1e-3, 2e-3, 3e-3] }'),
                                  ('critical_norm = "free"', "critical_norm = 50.0")))
    free = [run for run in load(path).runs if run.stage == "free"]
    assert sorted({(run.task.config.p, run.optimizer.config.lr) for run in free}) == [(59, 1e-3), (97, 2e-3), (113, 3e-3)]
    assert len(free) == 3 * 2


def test_a_zip_crossed_with_a_grid_sweep(tmp_path):
    path = write(tmp_path, edited(STUDY, ('sweep = {', 'zip = { "task.p" = [59, 97], "optimizer.lr" = [1e-3, 3e-3] }\n'
                                                     'sweep = {'), ('critical_norm = "free"', "critical_norm = 50.0")))
    clamp = [run for run in load(path).runs if run.stage == "clamp"]
    assert {(run.task.config.p, run.optimizer.config.lr, run.controller.config.rho) for run in clamp} == {
        (59, 1e-3, 0.9), (59, 1e-3, 1.1), (97, 3e-3, 0.9), (97, 3e-3, 1.1)}
    assert len(clamp) == 4 * 2


def test_a_zip_of_unequal_lengths_is_an_error(tmp_path):
    path = write(tmp_path, edited(STUDY, ('name = "free"', 'name = "free"\nzip = { "task.p" = [59, 97], '
                                                           '"optimizer.lr" = [1e-3] }')))
    assert problems_of(path) == [
        f"{path}: stage[free].zip: all lists in a zip must have one length, found lengths [1, 2]"]


def test_seeds_as_a_count_gives_range_of_that_count(tmp_path):
    experiment = load(write(tmp_path, edited(STUDY, ("seeds = 2", "seeds = 5"))))
    for stage in experiment.stages:
        for cell_runs in _by_cell(stage.runs):
            assert [run.seed for run in cell_runs] == [0, 1, 2, 3, 4]


def test_seeds_as_a_list_gives_exactly_those_seeds(tmp_path):
    experiment = load(write(tmp_path, edited(STUDY, ("seeds = 2", "seeds = [3, 7]"))))
    assert sorted({run.seed for run in experiment.runs}) == [3, 7]
    assert len(experiment.runs) == 2 + 2 * 2


def test_a_stage_seeds_override_the_experiment_seeds(tmp_path):
    experiment = load(write(tmp_path, edited(STUDY, ('critical_norm = "free"', 'critical_norm = "free"\nseeds = [11]'))))
    assert sorted(run.seed for run in experiment.stages[0].runs) == [0, 1]
    assert [run.seed for run in experiment.stages[1].runs] == [11, 11]  # one per rho


@pytest.mark.parametrize("seeds", ["0", "[]", "true", "1.5", "[1, 1]", '["a"]'])
def test_bad_seeds_are_refused(tmp_path, seeds):
    path = write(tmp_path, edited(STUDY, ("seeds = 2", f"seeds = {seeds}")))
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}: experiment.seeds: ")


def _by_cell(runs):
    cells: dict[str, list] = {}
    for run in runs:
        cells.setdefault(run.cell_id, []).append(run)
    return list(cells.values())


def test_dry_run_prints_one_line_per_run_and_a_total(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, STUDY)
    result = invoke("run", "--dry-run", path)
    assert result.exit_code == 0, result.output
    *lines, total = result.stdout.splitlines()
    experiment = load(path)
    assert total == "6 runs in 2 stages"
    assert [line.split()[0] for line in lines] == [run.run_id for run in experiment.runs]
    assert [line.split()[1] for line in lines] == ["stage=free"] * 2 + ["stage=clamp"] * 4
    assert list(tmp_path.iterdir()) == [path]  # nothing was run or stored


def test_dry_run_of_the_quickstart_lists_its_twenty_runs():
    result = invoke("run", "--dry-run", QUICKSTART)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[-1] == "20 runs in 2 stages"
    assert len(lines) == 21
    assert len({line.split()[0] for line in lines[:-1]}) == 20  # every run has its own id


# ---------------------------------------------------------------------------------------------------
# --set overrides any key.


def test_set_task_p_changes_the_runs(tmp_path):
    path = write(tmp_path, STUDY)
    before = load(path)
    after = load(path, overrides={"task.p": 59})
    assert {run.task.config.p for run in after.runs} == {59}
    assert not {run.run_id for run in before.runs} & {run.run_id for run in after.runs}

    plain, overridden = invoke("run", "--dry-run", path), invoke("run", "--dry-run", path, "--set", "task.p=59")
    assert overridden.exit_code == 0, overridden.output
    assert [line.split()[0] for line in overridden.stdout.splitlines()[:-1]] == [run.run_id for run in after.runs]
    assert plain.stdout != overridden.stdout


def test_set_reaches_a_stage_by_name_or_index(tmp_path):
    path = write(tmp_path, STUDY)
    result = invoke("run", "--dry-run", path, "--set", "stage.clamp.seeds=[5]", "--set", "stage.0.seeds=3")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "5 runs in 2 stages"
    assert result.stdout.count("stage=clamp") == 2 and result.stdout.count("seed=5") == 2


def test_a_bad_set_value_is_reported_under_the_command_line_not_the_file(tmp_path):
    path = write(tmp_path, STUDY)
    assert error_lines(invoke("validate", path, "--set", "task.p=abc", "--set", "architecture.hiden_dim=3",
                              "--set", "stage.1.seeds=[-1]")) == [
        'error: --set: task.p: expected an integer, found a string ("abc")',
        "error: --set: architecture.hiden_dim: unknown key (did you mean 'hidden_dim'?)",
        "error: --set: stage[clamp].seeds: a seed is an integer from 0 to 2^63 - 1, found -1",
    ]


def test_a_set_that_cannot_be_applied_is_reported_not_raised(tmp_path):
    path = write(tmp_path, STUDY)
    assert error_lines(invoke("run", "--dry-run", path, "--set", "nothing", "--set", "task.p")) == [
        "error: --set: nothing: expected key=value", "error: --set: task.p: expected key=value"]
    assert error_lines(invoke("run", "--dry-run", path, "--set", "task.p.x=1", "--set", "stage.hot.seeds=1")) == [
        "error: --set: task.p.x: task.p is an integer (97), not a table",
        "error: --set: stage.hot.seeds: stage has no table named or numbered 'hot' (names: free, clamp)",
    ]


# ---------------------------------------------------------------------------------------------------
# The matched counterfactual: a seed means the same initialization and split in every stage and cell.


def _seed_pairs(experiment) -> dict[int, set[tuple[int, int]]]:
    pairs: dict[int, set[tuple[int, int]]] = {}
    for run in experiment.runs:
        pairs.setdefault(run.seed, set()).add((run.init_seed, run.split_seed))
    return pairs


def test_a_seed_has_one_init_and_split_across_the_free_stage_and_every_clamp_cell():
    experiment = load(QUICKSTART)
    assert {run.stage for run in experiment.runs} == {"free", "clamp"}
    assert len({run.cell_id for run in experiment.runs}) == 5
    pairs = _seed_pairs(experiment)
    assert sorted(pairs) == [0, 1, 2, 3]
    assert all(len(pair) == 1 for pair in pairs.values())  # 5 cells, one (init, split) per seed
    assert len({pair for pair_set in pairs.values() for pair in pair_set}) == 4
    assert len({init for pair_set in pairs.values() for init, _ in pair_set}) == 4
    assert len({split for pair_set in pairs.values() for _, split in pair_set}) == 4


@pytest.mark.parametrize("overrides", [{"optimizer.lr": 1e-2},
                                       {"stage.clamp.sweep": {"controller.rho": [0.3, 0.6]}},
                                       {"training.max_steps": 300}])
def test_learning_rate_rho_and_budget_do_not_change_a_seeds_init_or_split(overrides):
    base, changed = load(QUICKSTART), load(QUICKSTART, overrides)
    assert {run.run_id for run in base.runs} != {run.run_id for run in changed.runs}
    assert _seed_pairs(changed) == _seed_pairs(base)


def test_the_task_changes_a_seeds_init_and_split():
    base, changed = _seed_pairs(load(QUICKSTART)), _seed_pairs(load(QUICKSTART, {"task.p": 59}))
    assert sorted(base) == sorted(changed)
    for seed in base:
        [(init, split)], [(new_init, new_split)] = base[seed], changed[seed]
        assert init != new_init and split != new_split


# ---------------------------------------------------------------------------------------------------
# Run ids are content addresses.


def test_run_ids_are_stable_across_loads_and_files(tmp_path):
    first, second = load(QUICKSTART), load(QUICKSTART)
    copy = load(write(tmp_path, QUICKSTART.read_text(), name="copy.toml"))
    ids = [run.run_id for run in first.runs]
    assert len(set(ids)) == len(ids) == 20
    assert [run.run_id for run in second.runs] == ids
    assert [run.run_id for run in copy.runs] == ids


def test_run_ids_change_when_a_setting_changes(tmp_path):
    ids = [run.run_id for run in load(QUICKSTART).runs]
    text = edited(QUICKSTART.read_text(), ("lr = 3e-3", "lr = 2e-3"))
    changed = [run.run_id for run in load(write(tmp_path, text)).runs]
    assert len(changed) == len(ids)
    assert not set(changed) & set(ids)


# ---------------------------------------------------------------------------------------------------
# critical_norm: an earlier stage or a number.


def test_critical_norm_naming_a_later_stage_is_an_error(tmp_path):
    path = write(tmp_path, edited(STUDY, (FIRST_STAGE, "")) + "\n" + FIRST_STAGE)  # clamp first, then free
    assert problems_of(path) == [
        f"{path}: stage[clamp].critical_norm: 'free' is a later stage; name an earlier stage or give a number"]


def test_critical_norm_naming_no_stage_is_an_error(tmp_path):
    path = write(tmp_path, edited(STUDY, ('critical_norm = "free"', 'critical_norm = "fre"')))
    assert problems_of(path) == [
        f"{path}: stage[clamp].critical_norm: 'fre' is no stage; name an earlier stage (did you mean 'free'?) "
        "or give a number"]


def test_a_clamp_without_critical_norm_is_an_error(tmp_path):
    path = write(tmp_path, edited(STUDY, ('critical_norm = "free"\n', "")))
    assert problems_of(path) == [
        f"{path}: stage[clamp].critical_norm: required: controller 'clamp' holds the norm relative to Wc; "
        "give a number or the name of a free stage"]


def test_a_numeric_critical_norm_is_accepted_and_a_negative_one_refused(tmp_path):
    experiment = load(write(tmp_path, edited(STUDY, ('critical_norm = "free"', "critical_norm = 12"))))
    assert {run.critical_norm for run in experiment.stages[1].runs} == {12.0}
    path = write(tmp_path, edited(STUDY, ('critical_norm = "free"', "critical_norm = -1.0")), name="negative.toml")
    assert problems_of(path) == [f"{path}: stage[clamp].critical_norm: expected a positive norm, found -1.0"]


def test_a_source_stage_without_a_matching_cell_is_an_error(tmp_path):
    path = write(tmp_path, edited(STUDY, ('critical_norm = "free"', 'critical_norm = "free"\ntask = { p = 59 }')))
    with pytest.raises(UserError) as raised:
        load(path)
    problems = raised.value.problems
    assert [(problem.source, problem.key) for problem in problems] == [(str(path), "stage[clamp].critical_norm")]
    assert problems[0].message.startswith("no cell of stage 'free' matches cell controller.rho=0.9")
    assert problems[0].message.endswith("(and 1 more like it)")  # the rho = 1.1 cell: one problem, one line
    for command in (["validate", path], ["run", "--dry-run", path]):
        lines = error_lines(invoke(*command))
        assert lines == [f"error: {problem}" for problem in problems]


def test_a_source_stage_with_a_matching_cell_plans(tmp_path):
    path = write(tmp_path, edited(STUDY, ('name = "free"', 'name = "free"\nsweep = { "task.p" = [59, 97] }'),
                                  ('critical_norm = "free"', 'critical_norm = "free"\ntask = { p = 59 }')))
    experiment = load(path)
    assert len(plan_experiment(experiment).cells) == 2 + 2
    free_p = {run.run_id: run.task.config.p for run in experiment.stages[0].runs}
    sources = {source for run in experiment.stages[1].runs for source in run.critical_norm_source}
    assert sources and {free_p[source] for source in sources} == {59}


def test_wc_is_never_taken_from_a_free_run_with_another_weight_decay(tmp_path):
    path = write(tmp_path, edited(STUDY, ('critical_norm = "free"', 'critical_norm = "free"\noptimizer = { weight_decay = 3.0 }')))
    with pytest.raises(UserError) as raised:
        load(path)
    assert all("weight decay" in problem.message for problem in raised.value.problems)


def test_new_seeds_in_the_source_stage_give_new_clamp_runs(tmp_path):
    before = load(write(tmp_path, STUDY))
    after = load(write(tmp_path, edited(STUDY, ('name = "free"', 'name = "free"\nseeds = [0, 1, 2]')), name="more.toml"))
    assert {r.run_id for r in before.stages[1].runs}.isdisjoint({r.run_id for r in after.stages[1].runs})


def test_a_sweep_that_repeats_a_value_is_refused(tmp_path):
    path = write(tmp_path, edited(STUDY, ("[0.9, 1.1]", "[0.9, 0.9]")))
    assert any("the sweeps give the same run twice" in line for line in problems_of(path))


@pytest.mark.parametrize("setting", ["optimizer.lr=inf", "optimizer.beta1=1.5", "optimizer.eps=0.0",
                                     "task.train_fraction=nan", 'training.device="banana"',
                                     'experiment.name="../escape"'])
def test_values_that_would_give_silent_garbage_are_refused(tmp_path, setting):
    result = invoke("validate", write(tmp_path, STUDY), "--set", setting)
    assert result.exit_code == 2, result.output
    assert setting.split("=")[0] in result.output


def test_a_stage_that_sweeps_a_key_replaces_the_file_level_sweep_of_it(tmp_path):
    text = edited(STUDY, ('[[stage]]\nname = "free"\n', '[sweep]\n"task.p" = [41, 59, 71]\n\n[[stage]]\nname = "free"\n'),
                  ('sweep = { "controller.rho" = [0.9, 1.1] }', 'sweep = { "controller.rho" = [0.9, 1.1], "task.p" = [59] }'))
    experiment = load(write(tmp_path, text))
    free, clamp = experiment.stages
    assert sorted({run.task.config.p for run in free.runs}) == [41, 59, 71]
    assert {run.task.config.p for run in clamp.runs} == {59} and len(clamp.runs) == 2 * 2  # rho x seeds, once each


# ---------------------------------------------------------------------------------------------------
# Declared contracts: the loader asks a controller's descriptor where its intervention starts and
# which weight-norm groups it needs, and checks both before anything trains.

DECLARED_FIELDS = "starts_at" in attrs.fields_dict(gnorm.NormController)
needs_declared_fields = pytest.mark.skipif(not DECLARED_FIELDS, reason="needs R3's descriptor fields")


@attrs.frozen
class FromBeginConfig:
    group: str = "hidden"
    begin: int = 100
    t_start: int = 1  # not where it starts: the descriptor says "begin", so this is never read as the start


class DeclaringPlugin:
    @staticmethod
    @gnorm.hookimpl
    def gnorm_norm_controllers():
        return [gnorm.NormController(name="from_begin", summary="test controller declaring its start and group",
                                     config_class=FromBeginConfig, factory=lambda config, context: None,
                                     starts_at="begin", groups=lambda config: [config.group])]


FORKED_ARM = """\
[experiment]
name = "forked"
seeds = 2

[task]
name = "modular_addition"
p = 97

[architecture]
name = "mlp"
embed_dim = 16
hidden_dim = 32

[[stage]]
name = "arm"
fork = { at_step = 100 }
controller = { name = "from_begin", begin = 100 }
"""


@pytest.fixture(scope="module")
def declaring_registry():
    return build_registry(extra_plugins=[(DeclaringPlugin, Provider("test-pkg", "0"))], autoload=False)


@needs_declared_fields
def test_a_forked_arm_that_starts_before_the_fork_is_refused_at_the_field_its_descriptor_declares(
        tmp_path, declaring_registry):
    path = write(tmp_path, edited(FORKED_ARM, ("begin = 100", "begin = 50")))
    assert problems_of(path, declaring_registry) == [
        f"{path}: stage[arm].controller.begin: is before fork.at_step (100): the trunk trains without this "
        "controller up to step 100; start it at or after the fork, found 50"]


@needs_declared_fields
def test_an_arm_starting_at_the_fork_loads_and_an_undeclared_t_start_is_not_read_as_its_start(
        tmp_path, declaring_registry):
    experiment = load(write(tmp_path, FORKED_ARM), registry=declaring_registry)
    assert {(run.controller.config.begin, run.controller.config.t_start) for run in experiment.runs} == {(100, 1)}


@needs_declared_fields
def test_a_group_a_controller_declares_that_the_architecture_lacks_is_refused_when_the_file_loads(
        tmp_path, declaring_registry):
    path = write(tmp_path, edited(FORKED_ARM, ("begin = 100", 'begin = 100, group = "attention"')))
    assert problems_of(path, declaring_registry) == [
        f"{path}: stage[arm].controller.group: controller 'from_begin' needs the weight-norm group 'attention', "
        "which architecture 'mlp' does not have here (its groups: embedding, hidden, readout)"]


# ---------------------------------------------------------------------------------------------------
# Validation in one place: what the grok criterion and the observables would refuse in a worker is
# refused when the file loads.


@attrs.frozen
class LevelConfig:
    level: float = 0.5


@attrs.frozen
class NoOptions:
    pass


def refusing_criterion(config: LevelConfig):
    if config.level > 0.9:
        raise UserError([Problem("", "criterion.level", f"{config.level} is above the best accuracy this "
                                                        "criterion can see")])
    return object()


def refusing_observable(config, context):
    raise UserError([Problem("", "", f"needs {context.num_classes + 1} classes")])


class RefusingPlugin:
    @staticmethod
    @gnorm.hookimpl
    def gnorm_grok_criteria():
        return [gnorm.GrokCriterion(name="refusing", summary="test criterion that refuses high levels",
                                    config_class=LevelConfig, factory=refusing_criterion)]

    @staticmethod
    @gnorm.hookimpl
    def gnorm_observables():
        return [gnorm.Observable(name="refusing", summary="test observable that always refuses",
                                 config_class=NoOptions, factory=refusing_observable)]


@pytest.fixture(scope="module")
def refusing_registry():
    return build_registry(extra_plugins=[(RefusingPlugin, Provider("test-pkg", "0"))], autoload=False)


def test_a_criterion_that_would_refuse_its_options_in_a_worker_is_refused_at_load(tmp_path, refusing_registry):
    path = write(tmp_path, edited(STUDY, (FIRST_STAGE, '[criterion]\nname = "refusing"\nlevel = 0.95\n\n' + FIRST_STAGE)))
    assert problems_of(path, refusing_registry) == [
        f"{path}: criterion.level: 0.95 is above the best accuracy this criterion can see"]
    edited_level = edited(STUDY, (FIRST_STAGE, '[criterion]\nname = "refusing"\nlevel = 0.5\n\n' + FIRST_STAGE))
    assert load(write(tmp_path, edited_level, name="fine.toml"), registry=refusing_registry).runs


def test_an_observable_that_would_refuse_to_be_built_in_a_worker_is_refused_at_load(tmp_path, refusing_registry):
    path = write(tmp_path, edited(STUDY, (FIRST_STAGE, '[evaluation]\nobservables = ["refusing"]\n\n' + FIRST_STAGE)))
    assert problems_of(path, refusing_registry) == [f"{path}: evaluation.observables[0]: needs 98 classes"]


# ---------------------------------------------------------------------------------------------------
# The command line's executor options laid over the file's [executor] table.


def test_with_executor_sets_the_options_an_executor_declares_and_skips_those_not_given(tmp_path):
    experiment = load(write(tmp_path, edited(STUDY, (FIRST_STAGE, '[executor]\nname = "local"\nretries = 5\n\n'
                                                                  + FIRST_STAGE))))
    moved = with_executor(experiment, "dask", {"scheduler": "tcp://host:8786", "workers": None})
    assert moved.executor == {"retries": 5, "name": "dask", "scheduler": "tcp://host:8786"}
    assert with_executor(experiment, None, {}).executor == experiment.executor


def test_with_executor_still_takes_the_scheduler_as_it_did(tmp_path):
    experiment = load(write(tmp_path, STUDY))
    expected = {"name": "dask", "scheduler": "tcp://host:8786"}
    assert with_executor(experiment, "dask", "tcp://host:8786").executor == expected
    assert with_executor(experiment, "dask", scheduler="tcp://host:8786").executor == expected
    assert with_executor(experiment, "dask", None).executor == {"name": "dask"}
