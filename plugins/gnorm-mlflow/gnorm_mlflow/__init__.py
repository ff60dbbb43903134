"""gnorm-mlflow: a study as an MLflow parent run, each gnorm run a nested child with params, metrics and outcome.

Switched on by an ``[observers.mlflow]`` table in the experiment file. With no ``tracking_uri`` (and no
``MLFLOW_TRACKING_URI`` in the environment) the runs go to a local SQLite store,
``sqlite:///<results_dir>/mlflow/mlflow.db``: no server. (MLflow's default backend since 3.7 is SQLite;
the file store ``./mlruns`` is in maintenance mode and MLflow 3.17 refuses it unless
``MLFLOW_ALLOW_FILE_STORE=true``.) The MLflow experiment is ``experiment_name``, by default the study's.

One parent run per results directory (found again by its ``gnorm.study_key`` tag when the study runs
again), and under it one child run per gnorm run (tag ``gnorm.run_id``): the run's resolved
configuration flattened into dotted params (``task.p``, ``controller.rho``), every stored evaluation's
metrics at their step, and the outcome as tags (``t_grok``, ``t_mem``, ``censored``,
``norm_at_grok``, ``budget``, ``critical_norm``, ``facts.<name>``). A gnorm run announced again (trained
again after an interruption) replaces its child run (the old one is deleted), so each gnorm run is
one MLflow run; a finished study run again adds nothing.

mlflow is imported only when a study starts with the table, so listing plugins stays fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import attrs

import gnorm

#: MLflow's limits per call and per param value (mlflow.utils.validation).
PARAMS_PER_BATCH, METRICS_PER_BATCH, PARAM_VALUE_LENGTH = 100, 1000, 6000


@attrs.frozen
class MlflowConfig:
    #: Where runs go (any MLflow tracking URI: ``sqlite:///path.db``, ``http://host:5000``...); default:
    #: ``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<results_dir>/mlflow/mlflow.db``.
    tracking_uri: str | None = None
    #: The MLflow experiment the runs go to (created when missing); default: the study's name.
    experiment_name: str | None = None


def tracking_uri(config: MlflowConfig, results_dir: str, environ: dict[str, str]) -> tuple[str, str | None]:
    """The tracking URI (the table's, else ``MLFLOW_TRACKING_URI``, else a SQLite file in the results
    directory) and, for that local default, the artifact location beside it (else None: MLflow's)."""
    if config.tracking_uri:
        return config.tracking_uri, None
    if environ.get("MLFLOW_TRACKING_URI"):
        return environ["MLFLOW_TRACKING_URI"], None
    folder = Path(results_dir).resolve() / "mlflow"
    return f"sqlite:///{folder / 'mlflow.db'}", (folder / "artifacts").as_uri()


def flattened(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tables as one table of dotted keys: ``{"task": {"p": 97}}`` -> ``{"task.p": 97}``."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flattened(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def param_text(value: Any) -> str:
    """A config value as an MLflow param: strings as they are, anything else as its JSON text
    (``1.1``, ``true``, ``null``, ``[...]``), cut to MLflow's longest param value."""
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= PARAM_VALUE_LENGTH else text[:PARAM_VALUE_LENGTH - 3] + "..."


def outcome_tags(record: Any, critical_norm: float | None) -> dict[str, str]:
    """The run's outcome as tags: ``censored`` (true when it never grokked within ``budget`` steps),
    ``budget``, where known ``t_mem``, ``t_grok``, ``norm_at_grok``, ``critical_norm`` (the Wc it was
    given), and each fact as ``facts.<name>``."""
    tags = {"censored": "true" if record.censored else "false", "budget": str(record.budget)}
    for key, value in (("t_mem", record.t_mem), ("t_grok", record.t_grok), ("norm_at_grok", record.norm_at_grok),
                       ("critical_norm", critical_norm)):
        if value is not None:
            tags[key] = str(value)
    tags.update({f"facts.{key}": param_text(value) for key, value in record.facts.items()})
    return tags


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def study_key(results_dir: str) -> str:
    """What finds a study's parent run again: sha256 of the absolute results directory, 16 hex digits."""
    return hashlib.sha256(str(Path(results_dir).resolve()).encode()).hexdigest()[:16]


class MlflowObserver:
    """Sends the study and its runs to MLflow through ``MlflowClient`` (no global MLflow state)."""

    def __init__(self, config: MlflowConfig, context: Any):
        from mlflow import MlflowClient

        uri, artifacts = tracking_uri(config, context.results_dir, dict(os.environ))
        if artifacts is not None:
            (Path(context.results_dir) / "mlflow").mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=uri)
        name = config.experiment_name or context.experiment
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            self.experiment_id = self.client.create_experiment(name, artifact_location=artifacts)
        else:
            self.experiment_id = experiment.experiment_id
            if experiment.lifecycle_stage == "deleted":
                self.client.restore_experiment(self.experiment_id)
        self.key, self.source, self.study = study_key(context.results_dir), context.source, context.experiment
        self.parent: str | None = None
        self.children: dict[str, str] = {}        # gnorm run id -> MLflow run id
        self.metrics: dict[str, list[Any]] = {}   # gnorm run id -> metrics not sent yet

    def search(self, filter_string: str) -> list[Any]:
        return list(self.client.search_runs([self.experiment_id], filter_string=filter_string))

    def before_study(self, results_dir: str, experiment: str) -> None:
        found = self.search(f"tags.`gnorm.study_key` = '{self.key}'")
        if found:
            self.parent = found[0].info.run_id
            self.client.update_run(self.parent, status="RUNNING")
            return
        self.parent = self.client.create_run(self.experiment_id, run_name=experiment, tags={
            "gnorm.role": "study", "gnorm.study_key": self.key, "gnorm.results_dir": str(Path(results_dir).resolve()),
            "gnorm.experiment_file": self.source}).info.run_id

    def before_run(self, run_id: str, stage: str, seed: int, config: dict[str, Any], cell_label: str) -> None:
        from mlflow.entities import Param

        for earlier in self.search(f"tags.`gnorm.run_id` = '{run_id}' and tags.`mlflow.parentRunId` = '{self.parent}'"):
            self.client.delete_run(earlier.info.run_id)  # announced again: the new one replaces it
        child = self.client.create_run(self.experiment_id, run_name=f"{stage} {cell_label} seed {seed}", tags={
            "mlflow.parentRunId": self.parent, "gnorm.role": "run", "gnorm.run_id": run_id, "gnorm.stage": stage,
            "gnorm.cell": cell_label, "gnorm.seed": str(seed)}).info.run_id
        params = [Param(key, param_text(value)) for key, value in flattened(config).items()]
        for batch in chunks(params, PARAMS_PER_BATCH):
            self.client.log_batch(child, params=batch)
        self.children[run_id], self.metrics[run_id] = child, []

    def after_evaluation(self, run_id: str, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.metrics[run_id] += [Metric(key, float(value), now, step) for key, value in metrics.items()
                                 if value is not None]

    def after_run(self, record: Any, critical_norm: float | None) -> None:
        from mlflow.entities import RunTag

        child, metrics = self.children.pop(record.run_id), self.metrics.pop(record.run_id)
        for batch in chunks(metrics, METRICS_PER_BATCH):
            self.client.log_batch(child, metrics=batch)
        tags = [RunTag(key, value) for key, value in outcome_tags(record, critical_norm).items()]
        for batch in chunks(tags, PARAMS_PER_BATCH):
            self.client.log_batch(child, tags=batch)
        self.client.set_terminated(child, "FINISHED")

    def after_study(self, done: int, failed: int) -> None:
        for child in self.children.values():  # runs whose announcement was cut short
            self.client.set_terminated(child, "KILLED")
        self.children.clear()
        if self.parent is not None:
            self.client.set_tag(self.parent, "gnorm.stored_last_time", str(done))
            self.client.set_tag(self.parent, "gnorm.failed_last_time", str(failed))
            self.client.set_terminated(self.parent, "FINISHED")


@gnorm.hookimpl
def gnorm_observers():
    return [gnorm.Observer(name="mlflow", summary="the study as an MLflow parent run, each run a nested child "
                           "(params, metrics per step, outcome tags); local SQLite store by default",
                           config_class=MlflowConfig, factory=MlflowObserver)]
