"""gnorm-mlflow sends a study to a local MLflow store under the results directory: one parent run, a
nested child per gnorm run whose params, metric histories and outcome tags, read back with
MlflowClient, are the store's; running the finished study again adds nothing, and a run announced
again replaces its child."""

from __future__ import annotations

import importlib
import importlib.util
import io
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("mlflow", reason="gnorm-mlflow needs mlflow-skinny (pip install -e plugins/gnorm-mlflow)")
pytest.importorskip("sqlalchemy", reason="the local SQLite MLflow store needs SQLAlchemy and Alembic")
pytest.importorskip("alembic", reason="the local SQLite MLflow store needs SQLAlchemy and Alembic")
from mlflow import MlflowClient  # noqa: E402

from gnorm.components import ObserverContext  # noqa: E402
from gnorm.loader import load_experiment  # noqa: E402
from gnorm.progress import Progress  # noqa: E402
from gnorm.registry import Provider, build_registry  # noqa: E402
from gnorm.scheduler import run_experiment  # noqa: E402
from gnorm.store import Store  # noqa: E402

STUDY = """\
[experiment]
name = "mlflow-tiny"
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

[observers.mlflow]
experiment_name = "grokking-tiny"
"""


def plugin():
    """The package's module, installed or read from its source folder."""
    if "gnorm_mlflow" not in sys.modules and importlib.util.find_spec("gnorm_mlflow") is None:
        source = Path(__file__).resolve().parents[1] / "gnorm_mlflow" / "__init__.py"
        spec = importlib.util.spec_from_file_location("gnorm_mlflow", source)
        module = importlib.util.module_from_spec(spec)
        sys.modules["gnorm_mlflow"] = module
        spec.loader.exec_module(module)
    return importlib.import_module("gnorm_mlflow")


def run_study(directory: Path) -> tuple[Path, list[str]]:
    path = directory / "study.toml"
    path.write_text(STUDY)
    registry = build_registry(extra_plugins=[(plugin(), Provider("gnorm-mlflow", "0.1.0"))], autoload=False)
    out = directory / "out"
    problems = run_experiment(load_experiment(path, registry), registry, Store(out, create=True), Progress(io.StringIO()))
    return out, problems


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    directory = tmp_path_factory.mktemp("mlflow")
    out, problems = run_study(directory)
    assert problems == []
    yield out
    mp.undo()


def client_of(out: Path) -> tuple[MlflowClient, str]:
    client = MlflowClient(tracking_uri=f"sqlite:///{out.resolve() / 'mlflow' / 'mlflow.db'}")
    return client, client.get_experiment_by_name("grokking-tiny").experiment_id


def runs_of(out: Path) -> tuple[list, list]:
    client, experiment_id = client_of(out)
    runs = client.search_runs([experiment_id])
    parents = [run for run in runs if run.data.tags.get("gnorm.role") == "study"]
    children = [run for run in runs if run.data.tags.get("gnorm.role") == "run"]
    assert len(runs) == len(parents) + len(children)
    return parents, children


def test_the_study_is_one_parent_run_with_one_nested_child_per_gnorm_run(study):
    parents, children = runs_of(study)
    [parent] = parents
    assert parent.info.run_name == "mlflow-tiny" and parent.info.status == "FINISHED"
    records = {record.run_id: record for record in Store(study).records()}
    assert sorted(child.data.tags["gnorm.run_id"] for child in children) == sorted(records) and len(records) == 4
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id and child.info.status == "FINISHED"
        record = records[child.data.tags["gnorm.run_id"]]
        assert (child.data.tags["gnorm.stage"], child.data.tags["gnorm.seed"]) == (record.stage, str(record.seed))


def test_each_child_holds_the_flattened_config_the_metrics_per_step_and_the_outcome(study):
    module = plugin()
    client, _ = client_of(study)
    store = Store(study)
    records = {record.run_id: record for record in store.records()}
    _, children = runs_of(study)
    for child in children:
        record = records[child.data.tags["gnorm.run_id"]]
        assert child.data.params == {key: module.param_text(value) for key, value in module.flattened(record.config).items()}
        assert child.data.params["task.p"] == "31" and "optimizer.lr" in child.data.params
        trajectory = store.trajectory(record.run_id)
        assert set(child.data.metrics) == {key for key in trajectory if key != "step"} >= {"test_acc", "weight_norm"}
        for key in child.data.metrics:
            history = sorted(client.get_metric_history(child.info.run_id, key), key=lambda metric: metric.step)
            assert [(m.step, m.value) for m in history] == list(zip(trajectory["step"], trajectory[key]))
        tags = child.data.tags
        assert tags["censored"] == ("true" if record.censored else "false") and tags["budget"] == "200"
        assert tags.get("t_grok") == (None if record.t_grok is None else str(record.t_grok))
        assert tags.get("t_mem") == (None if record.t_mem is None else str(record.t_mem))
        assert (tags.get("critical_norm") == "30.0") == (record.stage == "clamp")


def test_running_the_finished_study_again_adds_no_mlflow_run_and_no_metric(study):
    client, _ = client_of(study)
    before = {child.info.run_id for child in runs_of(study)[1]}
    again, problems = run_study(study.parent)
    assert problems == []
    parents, children = runs_of(study)
    assert len(parents) == 1 and {child.info.run_id for child in children} == before
    store = Store(study)
    for child in children:
        steps = store.trajectory(child.data.tags["gnorm.run_id"])["step"]
        assert [m.step for m in client.get_metric_history(child.info.run_id, "test_acc")] == steps


def test_a_run_announced_again_replaces_its_child_run(study):
    module = plugin()
    record = Store(study).records()[0]
    trajectory = Store(study).trajectory(record.run_id)
    observer = module.MlflowObserver(module.MlflowConfig(experiment_name="grokking-tiny"),
                                     ObserverContext(str(study), "mlflow-tiny", "study.toml"))
    observer.before_study(str(study), "mlflow-tiny")
    observer.before_run(record.run_id, record.stage, record.seed, record.config, "again")
    for position, step in enumerate(trajectory["step"]):
        observer.after_evaluation(record.run_id, step, {"test_acc": trajectory["test_acc"][position]})
    observer.after_run(record, None)
    observer.after_study(1, 0)
    _, children = runs_of(study)
    [child] = [c for c in children if c.data.tags["gnorm.run_id"] == record.run_id]
    assert child.data.tags["gnorm.cell"] == "again" and len(children) == 4
    client, _ = client_of(study)
    assert len(client.get_metric_history(child.info.run_id, "test_acc")) == len(trajectory["step"])


def test_the_tracking_uri_is_the_tables_else_the_environments_else_sqlite_in_the_results_dir(tmp_path):
    module = plugin()
    assert module.tracking_uri(module.MlflowConfig(tracking_uri="http://h:5000"), str(tmp_path),
                               {"MLFLOW_TRACKING_URI": "sqlite:///x.db"}) == ("http://h:5000", None)
    assert module.tracking_uri(module.MlflowConfig(), str(tmp_path), {"MLFLOW_TRACKING_URI": "sqlite:///x.db"}) == (
        "sqlite:///x.db", None)
    uri, artifacts = module.tracking_uri(module.MlflowConfig(), str(tmp_path), {})
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlflow/mlflow.db" and uri.startswith("sqlite:////")
    assert artifacts == (tmp_path.resolve() / "mlflow" / "artifacts").as_uri()
    assert module.param_text("adamw") == "adamw" and module.param_text([1, 2]) == "[1, 2]"
    assert module.param_text(None) == "null" and len(module.param_text("x" * 7000)) == module.PARAM_VALUE_LENGTH
    assert json.loads(module.param_text(1.1)) == 1.1
