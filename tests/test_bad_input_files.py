"""Bad experiment files are answered when the file is read: one line per problem naming the file (or
``--set``) and the dotted key, exit status 2, no traceback, and nothing trains.

Every check goes through the real command line (``gnorm validate`` and ``gnorm run --dry-run``).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

import gnorm.cli
import gnorm.registry
from gnorm.cli import main
from gnorm.experiment_file import MAX_FILE_BYTES
from gnorm.registry import DISABLE_AUTOLOAD_ENV, build_registry

BUILTINS = build_registry(autoload=False)
COMMANDS = (["validate"], ["run", "--dry-run"])
FREE_STAGE = '[[stage]]\nname = "free"\n'


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

[training]
max_steps = 1000

[[stage]]
name = "free"

[[stage]]
name = "clamp"
critical_norm = "free"
controller = { name = "clamp", t_start = 100 }
sweep = { "controller.rho" = [0.9, 1.1] }
"""


def edited(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times"
    return text.replace(old, new)


def invoke(*args: object):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    return result


def refusal(result) -> list[str]:
    """The ``error:`` lines of a refused input: exit 2, nothing on stdout, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert result.stdout == ""
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert lines and all(line.startswith("error: ") for line in lines), result.stderr
    return lines


def one_line_naming(result, source: object, key: str) -> str:
    """The single line of a refusal, which names ``source`` and ``key``."""
    lines = refusal(result)
    assert len(lines) == 1, lines
    prefix = f"error: {source}: {key}: " if key else f"error: {source}: "
    assert lines[0].startswith(prefix), (lines[0], prefix)
    return lines[0]


def write(tmp_path: Path, text: str | bytes, name: str = "study.toml") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


# ---------------------------------------------------------------------------------------------------
# What is read: only a regular UTF-8 file of sensible size.

NOT_UTF8 = {
    "latin-1": STUDY.replace('name = "study"', 'name = "study"\ndescription = "Grökking"').encode("latin-1"),
    "utf-16": STUDY.encode("utf-16"),
    "binary": bytes(range(256)) * 8,
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("encoding", sorted(NOT_UTF8))
def test_a_file_that_is_not_utf8_is_one_line_naming_the_file(tmp_path, command, encoding):
    path = write(tmp_path, NOT_UTF8[encoding])
    line = one_line_naming(invoke(*command, path), path, "")
    assert "not UTF-8" in line


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    path = write(tmp_path, b"\xef\xbb\xbf" + STUDY.encode())
    result = invoke("validate", path)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_a_directory_is_refused_as_one_line(tmp_path, command):
    folder = tmp_path / "folder.toml"
    folder.mkdir()
    assert "a directory" in one_line_naming(invoke(*command, folder), folder, "")


def _finishes(target, seconds: float = 60.0) -> bool:
    """Run ``target`` in a thread; False when it has not returned after ``seconds`` (it hangs)."""
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="this system has no named pipes")
@pytest.mark.parametrize("command", COMMANDS)
def test_a_named_pipe_is_refused_without_waiting_for_a_writer(tmp_path, command):
    pipe = tmp_path / "pipe.toml"
    os.mkfifo(pipe)
    results = []
    assert _finishes(lambda: results.append(invoke(*command, pipe))), "reading the named pipe blocked"
    assert "a named pipe" in one_line_naming(results[0], pipe, "")


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="this system has no /dev/zero")
def test_a_device_is_refused_without_reading_it():
    results = []
    assert _finishes(lambda: results.append(invoke("validate", "/dev/zero"))), "reading /dev/zero did not stop"
    assert "device" in one_line_naming(results[0], "/dev/zero", "")


def test_a_file_too_large_to_be_an_experiment_is_refused_unread(tmp_path):
    path = tmp_path / "huge.toml"
    with open(path, "wb") as handle:  # sparse where the file system allows: no 16 MiB written
        handle.truncate(MAX_FILE_BYTES + 1)
    assert "at most 16 MiB" in one_line_naming(invoke("validate", path), path, "")


def test_arrays_nested_too_deeply_are_one_line(tmp_path):
    path = write(tmp_path, STUDY + "deep = " + "[" * 100_000 + "]" * 100_000 + "\n")
    one_line_naming(invoke("validate", path), path, "")


# ---------------------------------------------------------------------------------------------------
# Values: finite numbers, integers a 64-bit store holds, bounds where a setting has a natural one.


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400"])
@pytest.mark.parametrize("key, old, new", [
    ("stage[clamp].critical_norm", 'critical_norm = "free"', "critical_norm = {value}"),
    ("optimizer.lr", "[training]", "[optimizer]\nlr = {value}\n\n[training]"),
    ('stage[clamp].sweep."controller.rho"[1]', "[0.9, 1.1]", "[0.9, {value}]"),
    ("task.train_fraction", "p = 97", "p = 97\ntrain_fraction = {value}"),
])
def test_a_number_that_is_not_finite_is_refused_under_its_key(tmp_path, command, value, key, old, new):
    path = write(tmp_path, edited(STUDY, old, new.format(value=value)))
    one_line_naming(invoke(*command, path), path, key)


HUGE = str(2**63)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("key, old, new", [
    ("training.max_steps", "max_steps = 1000", f"max_steps = {HUGE}"),
    ("training.max_steps", "max_steps = 1000", "max_steps = 10_000_000_000"),
    ("experiment.seeds", "seeds = 2", f"seeds = [0, {HUGE}]"),
    ("experiment.seeds", "seeds = 2", "seeds = 100_000_000_000"),
    ("experiment.seeds", "seeds = 2", "seeds = [0, -1]"),
    ("stage[clamp].controller.t_start", "t_start = 100", f"t_start = {HUGE}"),
    ("stage[clamp].critical_norm", 'critical_norm = "free"', f"critical_norm = {HUGE}"),
    ("stage[clamp].fork.at_step", 'critical_norm = "free"', f'critical_norm = "free"\nfork = {{ at_step = {HUGE} }}'),
    ("evaluation.every", "[training]", f'[evaluation]\nschedule = "every"\nevery = -{HUGE}0\n\n[training]'),
    ("evaluation.points", "[training]", "[evaluation]\npoints = 1_000_000_000\n\n[training]"),
    ("task.p", "p = 97", f"p = {HUGE}"),
    ("task.p", "p = 97", "p = 1_000_003"),
    ("executor.retries", "[training]", f"[executor]\nretries = {HUGE}\n\n[training]"),
])
def test_an_integer_out_of_range_is_refused_under_its_key(tmp_path, command, key, old, new):
    path = write(tmp_path, edited(STUDY, old, new))
    one_line_naming(invoke(*command, path), path, key)


def test_a_huge_modulus_for_division_is_refused_quickly_with_the_bound(tmp_path):
    text = edited(STUDY, 'name = "modular_addition"\np = 97', 'name = "modular_division"\np = 1000000000000000003')
    path = write(tmp_path, text)
    results = []
    assert _finishes(lambda: results.append(invoke("validate", path)), 60.0), "checking p did not finish"
    assert "at most 8192" in one_line_naming(results[0], path, "task.p")


def test_a_sweep_too_large_to_plan_is_refused_before_it_is_expanded(tmp_path):
    sweep = "\n".join(f'"optimizer.{key}" = [{", ".join(str(0.1 + i / 1000) for i in range(100))}]'
                      for key in ("lr", "weight_decay", "beta1", "beta2"))
    path = write(tmp_path, edited(STUDY, '[[stage]]\nname = "free"', f'[sweep]\n{sweep}\n\n[[stage]]\nname = "free"'))
    assert "at most 100000 runs" in one_line_naming(invoke("validate", path), path, "sweep")


# ---------------------------------------------------------------------------------------------------
# Types: a string or a table where a list belongs is refused, never iterated.


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("key, old, new", [
    ("analysis[1].group_by", "[training]", '[[analysis]]\nname = "delay_law"\ngroup_by = "task.p"\n\n[training]'),
    ("analysis[1].group_by", "[training]", '[[analysis]]\nname = "delay_law"\ngroup_by = { p = 1 }\n\n[training]'),
    ("analysis[1].stages", "[training]", '[[analysis]]\nname = "critical_norm"\nstages = "free"\n\n[training]'),
    ("analysis[1].within", "[training]", '[[analysis]]\nname = "delay_law"\nwithin = "rho"\n\n[training]'),
    ("evaluation.observables", "[training]", '[evaluation]\nobservables = "logit_scale"\n\n[training]'),
    ("stage[free].controller.matrices", FREE_STAGE,
     FREE_STAGE + 'controller = { name = "clip_rows", max_row_norm = 1.0, matrices = "hidden" }\n'),
    ("experiment.seeds", "seeds = 2", 'seeds = "01"'),
    ("experiment.seeds", "seeds = 2", "seeds = { a = 1 }"),
    ('stage[clamp].sweep."controller.rho"', "[0.9, 1.1]", '"0.9"'),
])
def test_a_string_or_table_where_a_list_belongs_is_one_line(tmp_path, command, key, old, new):
    path = write(tmp_path, edited(STUDY, old, new))
    line = one_line_naming(invoke(*command, path), path, key)
    assert "expected a" in line


# ---------------------------------------------------------------------------------------------------
# Checked when the file is read, not after training: analyzer options, groups, splits, shapes.


def with_analysis(options: str) -> str:
    return edited(STUDY, "[training]", f"[[analysis]]\n{options}\n\n[training]")


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("key, options", [
    ("analysis[1].resamples", 'name = "critical_norm"\nresamples = -5'),
    ("analysis[1].confidence", 'name = "delay_law"\nconfidence = 5.0'),
    ("analysis[1].min_grokked", 'name = "levers"\nmin_grokked = 0'),
    ("analysis[1].seed", 'name = "shared_exponent"\nseed = -1'),
    ("analysis[1].interval", 'name = "delay_law"\ninterval = "seeds"'),
    ("analysis[1].split", 'name = "replicate_agreement"\nsplit = -2'),
    ("analysis[1].replicate_by", 'name = "replicate_agreement"\nreplicate_by = "task.q"'),
    ("analysis[1].raised_norm", 'name = "logit_mediation"\nraised_norm = -1.0'),
    ("analysis[1].stages[0]", 'name = "delay_law"\nstages = ["clmap"]'),
    ("analysis[1].group_by[0]", 'name = "delay_law"\ngroup_by = ["task.q"]'),
    ("analysis[1].x", 'name = "law_comparison"\nx = "controller.rhoo"'),
    ('analysis[1].within."optimizer.learning_rate"', 'name = "delay_law"\nwithin = { "optimizer.learning_rate" = [0, 1] }'),
])
def test_a_bad_analyzer_option_is_refused_before_anything_trains(tmp_path, command, key, options):
    path = write(tmp_path, with_analysis(options))
    one_line_naming(invoke(*command, path), path, key)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("key, old, new", [
    ("task.train_fraction", "p = 97", "p = 97\ntrain_fraction = 0.00001"),
    ("task.train_fraction", "p = 97", "p = 97\ntrain_fraction = 0.99999"),
    ("stage[clamp].controller.group", '{ name = "clamp", t_start = 100 }',
     '{ name = "group_clamp", group = "attention", t_start = 100 }'),
    ("stage[free].controller.matrices", FREE_STAGE,
     FREE_STAGE + 'controller = { name = "clip_rows", max_row_norm = 1.0, matrices = ["w_hidden"] }\n'),
    ("stage[clamp].controller.partner", '{ name = "clamp", t_start = 100 }',
     '{ name = "layer_allocation", group = "readout", partner = "readout", t_start = 100 }'),
    ("architecture.name", 'name = "modular_addition"\np = 97', 'name = "sparse_parity"'),
])
def test_what_a_worker_would_refuse_is_refused_when_the_file_is_read(tmp_path, command, key, old, new):
    text = edited(STUDY, old, new)
    if key == "architecture.name":
        text = edited(text, 'name = "mlp"\nembed_dim = 16\nhidden_dim = 32', 'name = "transformer"')
    path = write(tmp_path, text)
    one_line_naming(invoke(*command, path), path, key)


def test_a_split_that_empties_at_one_swept_p_names_the_sweep_once_per_value(tmp_path):
    path = write(tmp_path, edited(STUDY, "p = 97", 'train_fraction = 0.01\n\n[sweep]\n"task.p" = [3, 5, 7, 97]'))
    line = one_line_naming(invoke("validate", path), path, "task.train_fraction")
    assert "the training set is empty (and 2 more like it)" in line  # p = 3, 5 and 7; p = 97 is fine


# ---------------------------------------------------------------------------------------------------
# Messages: one line per problem, however many runs or characters it touches.


def test_a_problem_met_in_every_run_is_one_line(tmp_path):
    text = edited(STUDY, "seeds = 2", "seeds = 50")
    text = edited(text, "[0.9, 1.1]", "[0.9, 1.1]\nseeds = [0, 0]")
    path = write(tmp_path, text)
    assert len(refusal(invoke("validate", path))) == 1


def test_a_repeated_run_over_many_seeds_is_summarised_once(tmp_path):
    path = write(tmp_path, edited(STUDY, "[0.9, 1.1]", "[0.9, 0.9]"))
    line = one_line_naming(invoke("validate", path), path, "stage[clamp]")
    assert "the sweeps give the same run twice" in line and "(and 1 more like it)" in line


def test_distinct_problems_are_one_line_each(tmp_path):
    text = edited(STUDY, "max_steps = 1000", "max_steps = nan")
    path = write(tmp_path, edited(text, "p = 97", 'p = "97"'))
    assert [line.split(": ")[2] for line in refusal(invoke("validate", path))] == ["task.p", "training.max_steps"]


# ---------------------------------------------------------------------------------------------------
# --set: a bad value given on the command line names the command line.


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("setting, key", [
    ("task.p=abc", "task.p"),
    ("optimizer.lr=nan", "optimizer.lr"),
    (f"training.max_steps={HUGE}", "training.max_steps"),
    ('evaluation.observables="logit_scale"', "evaluation.observables"),
    ("stage.1.critical_norm=inf", "stage[clamp].critical_norm"),
    ("stage.clamp.seeds=[-3]", "stage[clamp].seeds"),
])
def test_a_bad_set_value_names_the_command_line(tmp_path, command, setting, key):
    path = write(tmp_path, STUDY)
    one_line_naming(invoke(*command, path, "--set", setting), "--set", key)
