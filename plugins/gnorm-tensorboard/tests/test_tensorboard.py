"""gnorm-tensorboard writes one TensorBoard run per gnorm run whose scalars, read back with TensorBoard's
own EventAccumulator, are the store's values at the store's steps; running the finished study again
writes nothing, and a run announced again replaces its events instead of doubling them."""

from __future__ import annotations

import importlib
import importlib.util
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorboard", reason="gnorm-tensorboard needs tensorboard (pip install -e plugins/gnorm-tensorboard)")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from gnorm.loader import load_experiment  # noqa: E402
from gnorm.progress import Progress  # noqa: E402
from gnorm.registry import Provider, build_registry  # noqa: E402
from gnorm.scheduler import run_experiment  # noqa: E402
from gnorm.store import Store  # noqa: E402

STUDY = """\
[experiment]
name = "tb-tiny"
seeds = 2

[task]
name = "modular_addition"
p = 31
train_fraction = 0.5

[architecture]
name = "mlp"
embed_dim = 8
hidden_dim = 16

[optimizer]
lr = 5e-3

[training]
max_steps = 200

[evaluation]
schedule = "every"
every = 20

[executor]
name = "serial"

[[stage]]
name = "free"

[[stage]]
name = "clamp"
critical_norm = 30.0
controller = { name = "clamp", t_start = 100 }
sweep = { "controller.rho" = [1.1] }
"""


def plugin():
    """The package's module, installed or read from its source folder."""
    if "gnorm_tensorboard" not in sys.modules and importlib.util.find_spec("gnorm_tensorboard") is None:
        source = Path(__file__).resolve().parents[1] / "gnorm_tensorboard" / "__init__.py"
        spec = importlib.util.spec_from_file_location("gnorm_tensorboard", source)
        module = importlib.util.module_from_spec(spec)
        sys.modules["gnorm_tensorboard"] = module
        spec.loader.exec_module(module)
    return importlib.import_module("gnorm_tensorboard")


def run_study(directory: Path, table: str = "[observers.tensorboard]\n") -> tuple[Path, list[str]]:
    path = directory / "study.toml"
    path.write_text(STUDY + "\n" + table)
    registry = build_registry(extra_plugins=[(plugin(), Provider("gnorm-tensorboard", "0.1.0"))], autoload=False)
    out = directory / "out"
    problems = run_experiment(load_experiment(path, registry), registry, Store(out, create=True), Progress(io.StringIO()))
    return out, problems


def events_of(folder: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tb")
    out, problems = run_study(directory)
    assert problems == []
    return out


def folder_of(out: Path, record) -> Path:
    return plugin().run_folder(out / "tensorboard", "tb-tiny", record.stage,
                               "(all)" if not record.cell else "rho=1.1", record.seed, record.run_id)


def test_each_run_is_one_tensorboard_run_whose_scalars_are_the_stores_values_at_its_steps(study):
    store = Store(study)
    records = store.records()
    assert len(records) == 4
    folders = {path.parent for path in (study / "tensorboard").rglob("events.out.tfevents.*")}
    assert folders == {folder_of(study, record) for record in records}
    for record in records:
        trajectory = store.trajectory(record.run_id)
        events = events_of(folder_of(study, record))
        metric_tags = {tag for tag in events.Tags()["scalars"] if not tag.startswith("outcome/")}
        assert metric_tags == {key for key in trajectory if key != "step"} >= {"train_loss", "test_acc", "weight_norm"}
        for key in metric_tags:
            read = events.Scalars(key)
            assert [event.step for event in read] == trajectory["step"]
            assert [event.value for event in read] == [float(np.float32(value)) for value in trajectory[key]]


def test_each_run_carries_its_config_and_outcome(study):
    store = Store(study)
    for record in store.records():
        events = events_of(folder_of(study, record))
        [config] = events.Tensors("config/text_summary")
        text = config.tensor_proto.string_val[0].decode()
        assert json.loads(text.strip("`\n")) == record.config
        outcome = {tag[len("outcome/"):]: events.Scalars(tag)[-1].value
                   for tag in events.Tags()["scalars"] if tag.startswith("outcome/")}
        assert outcome["censored"] == float(record.censored) and outcome["budget"] == record.budget
        assert outcome.get("t_grok") == (None if record.t_grok is None else float(record.t_grok))
        assert outcome.get("t_mem") == (None if record.t_mem is None else float(record.t_mem))
        assert (outcome.get("critical_norm") == 30.0) == (record.stage == "clamp")
        assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")


def test_running_the_finished_study_again_writes_no_event(study, tmp_path):
    before = {path: path.read_bytes() for path in (study / "tensorboard").rglob("*") if path.is_file()}
    again, problems = run_study(study.parent)
    assert again == study and problems == []
    assert {path: path.read_bytes() for path in (study / "tensorboard").rglob("*") if path.is_file()} == before


def test_a_run_announced_again_replaces_its_events(study, tmp_path):
    from gnorm.components import ObserverContext

    module = plugin()
    [record] = [r for r in Store(study).records() if r.stage == "free"][:1]
    trajectory = Store(study).trajectory(record.run_id)
    observer = module.TensorBoardObserver(module.TensorBoardConfig(log_dir=str(tmp_path / "tb")),
                                          ObserverContext(str(study), "tb-tiny", "study.toml"))
    for _ in range(2):
        observer.before_run(record.run_id, record.stage, record.seed, record.config, "(all)")
        for position, step in enumerate(trajectory["step"]):
            observer.after_evaluation(record.run_id, step, {"test_acc": trajectory["test_acc"][position]})
        observer.after_run(record, None)
    folder = module.run_folder(tmp_path / "tb", "tb-tiny", "free", "(all)", record.seed, record.run_id)
    assert len(list(folder.glob("events.out.tfevents.*"))) == 1
    assert [event.step for event in events_of(folder).Scalars("test_acc")] == trajectory["step"]


def test_log_dir_moves_the_runs_and_the_layout_groups_them_by_study_stage_and_cell(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out, problems = run_study(tmp_path, '[observers.tensorboard]\nlog_dir = "elsewhere"\nhparams = false\n')
    assert problems == [] and not (out / "tensorboard").exists()
    runs = sorted(str(path.parent.relative_to(tmp_path / "elsewhere"))
                  for path in (tmp_path / "elsewhere").rglob("events.out.tfevents.*"))
    assert [run.rsplit("/", 1)[0] for run in runs] == ["tb-tiny/clamp/rho=1.1"] * 2 + ["tb-tiny/free/all"] * 2
    with pytest.raises(KeyError):  # hparams = false: nothing for the HParams dashboard
        events_of(tmp_path / "elsewhere" / runs[0]).PluginTagToContent("hparams")


def test_folder_names_keep_what_reads_and_replace_the_rest():
    module = plugin()
    assert module.folder_name("rho=1.1, lr=0.001") == "rho=1.1_lr=0.001"
    assert module.folder_name("(all)") == "all"
    assert module.flattened({"task": {"p": 97, "name": "x"}, "seed": 1, "e": {}}) == {
        "task.p": 97, "task.name": "x", "seed": 1, "e": {}}
