"""gnorm from Python: ``gnorm.open(results_dir)`` reads a results directory, ``gnorm.run(experiment)``
trains one, through the same loader, store and scheduler as the command line.

    results = gnorm.run("study.toml", out="runs/study", overrides={"task.p": 59})
    runs = results.runs()                       # pandas: one row per run, config as dotted columns
    curves = results.evaluations()              # pandas: one row per (run_id, step)
    delay = results.analyze("delay_law", min_cells=3)

Importing this module imports neither torch nor pandas; pandas (``pip install 'gnorm[pandas]'``) is
needed for the DataFrames only.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from gnorm.errors import Problem, UserError

if TYPE_CHECKING:
    import pandas

    from gnorm.components import Analysis, RunRecord
    from gnorm.registry import Registry
    from gnorm.store import Store

PANDAS_INSTALL = "pip install 'gnorm[pandas]'"
#: The dtypes of the outcomes a run may lack (a censored run has no T_grok), whatever the runs hold.
OUTCOME_DTYPES = {"t_mem": "Int64", "t_grok": "Int64", "norm_at_grok": "float64"}
#: The columns every runs() frame starts with, whatever the runs hold.
RUN_COLUMNS = ("run_id", "stage", "cell", "seed", "status", "t_mem", "t_grok", "censored", "norm_at_grok", "budget")
#: Keys of a run's config that are columns already (RUN_COLUMNS) and are left out of the dotted ones.
CONFIG_KEYS_SHOWN = ("stage", "seed")


def _pandas() -> Any:
    try:
        import pandas
    except ImportError:
        raise ImportError(f"this needs pandas, which is not installed here: {PANDAS_INSTALL}") from None
    return pandas


def _registry() -> Registry:
    """The plugin registry, as the command line builds it; a plugin that failed to load is a warning."""
    from gnorm.registry import default_registry

    registry = default_registry()
    for failure in registry.failures:
        warnings.warn(f"plugin {failure.entry_point} from {failure.provider} failed to load and was skipped: "
                      f"{failure.error}", RuntimeWarning, stacklevel=3)
    return registry


def open(results_dir: str | Path) -> Results:  # noqa: A001 - gnorm.open, as in the issue
    """The results in ``results_dir``, read-only (nothing there is created or changed). A directory that
    holds no store, or a damaged one, raises :class:`gnorm.errors.UserError` with the line
    ``gnorm show`` prints."""
    return Results(results_dir)


def run(experiment: str | Path | Mapping[str, Any], out: str | Path | None = None,
        overrides: Mapping[str, Any] | None = None, executor: str | Mapping[str, Any] | None = None) -> Results:
    """Train every run of ``experiment`` that ``out`` lacks, as ``gnorm run`` does, and return the results.

    ``experiment`` is an experiment file's path or a dict with the file's schema (its problems name
    ``<dict>``); ``overrides`` maps dotted keys to values as ``--set`` does (``{"task.p": 59}``; their
    problems name ``--set``); ``executor`` is an executor's name (``--executor``) or a table like the
    file's ``[executor]``. ``out`` defaults to ``experiment.output_dir``, else runs/<experiment.name>.
    Running again resumes: stored runs are skipped, failed ones are tried again. Bad input raises
    :class:`gnorm.errors.UserError` before anything trains. Runs that failed on every attempt are a
    ``RuntimeWarning`` each (they are in ``runs(failed=True)``). No report is written (``gnorm report``).
    """
    from gnorm.executor_table import executor_choice, with_executor
    from gnorm.progress import Progress
    from gnorm.scheduler import run_experiment
    from gnorm.store import Store
    from gnorm.studies import load, results_directory

    registry = _registry()
    loaded = load(experiment, registry, _overrides(overrides))
    if isinstance(executor, Mapping):
        table = dict(executor)
        loaded = with_executor(loaded, table.pop("name", None), table)
    elif executor is not None:
        loaded = with_executor(loaded, executor)
    choice = executor_choice(loaded, registry)
    directory = results_directory(loaded, out)
    store = Store(directory, create=True)
    try:
        with store.exclusive():
            skipped = run_experiment(loaded, registry, store, Progress(), choice)
    finally:
        store.close()
    for line in skipped:
        warnings.warn(line, RuntimeWarning, stacklevel=2)
    return Results(directory)


def _overrides(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """``overrides`` checked to be dotted keys (strings) and values."""
    if overrides is None:
        return {}
    if not isinstance(overrides, Mapping):
        raise UserError([Problem("overrides", "", "expected a dict of dotted keys and values, e.g. "
                                                  "{'task.p': 59}")])
    wrong = [Problem("overrides", repr(key), "a key must be a dotted string such as 'task.p'")
             for key in overrides if not isinstance(key, str) or not key]
    if wrong:
        raise UserError(wrong)
    return dict(overrides)


class Results:
    """A results directory, read-only. Every method reads the store anew, so a study still running
    elsewhere shows the runs stored so far."""

    def __init__(self, results_dir: str | Path):
        from gnorm.store import Store

        self.directory = Path(results_dir)
        self._store: Store = Store(self.directory, read_only=True)

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> Results:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def stages(self) -> list[str]:
        """The stage names of the experiment last run here, in the file's order."""
        return list(dict.fromkeys(stage for _, stage, _ in self._store.plan()))

    def records(self) -> list[RunRecord]:
        """The finished runs as the analyzers read them (:class:`gnorm.components.RunRecord`), in plan order."""
        return self._store.records()

    def __repr__(self) -> str:
        plan, finished = self._store.plan(), self._store.finished_run_ids()
        done = len({run_id for run_id, _, _ in plan} & finished)
        return f"<gnorm.Results {str(self.directory)!r}: {done}/{len(plan)} runs finished, stages {self.stages}>"

    def runs(self, failed: bool = False) -> pandas.DataFrame:
        """One row per finished run (with ``failed``, also one per run stored as failed, after them):
        run_id, stage, cell (its label, e.g. ``rho=1.1``), seed, status (``done`` or ``failed``), the
        outcomes (t_mem, t_grok, censored, norm_at_grok, budget), the resolved configuration as dotted
        columns (``task.p``, ``optimizer.lr``, ``controller.rho``) and the facts as ``facts.<name>``. A
        failed run has its cell's keys, ``error`` and ``attempts``, and no outcomes.

        dtypes: t_mem and t_grok are nullable integers (``Int64``; ``<NA>`` for a censored run),
        norm_at_grok ``float64`` (NaN for a censored run); a column of booleans is ``bool``
        (``boolean`` where a row lacks it), of integers ``int64`` (``Int64`` where a row lacks it), of
        numbers ``float64``; other columns as pandas reads them.
        """
        from gnorm.frames import run_rows, typed_frame

        pandas = _pandas()
        rows = run_rows(self._store.records(), self._store.failed_runs() if failed else [], CONFIG_KEYS_SHOWN)
        return typed_frame(pandas, rows, RUN_COLUMNS, OUTCOME_DTYPES)

    def evaluations(self) -> pandas.DataFrame:
        """One row per finished run and evaluated step (run_id, step, then every metric stored:
        train_loss, test_loss, train_acc, test_acc, weight_norm and the observables' columns), in plan
        and step order; joins ``runs()`` on run_id."""
        from gnorm.frames import evaluation_rows, typed_frame

        pandas = _pandas()
        rows = evaluation_rows(self._store, [record.run_id for record in self._store.records()])
        return typed_frame(pandas, rows, ("run_id", "step"), {"step": "int64"})

    def analyze(self, name: str, **options: Any) -> Analysis:
        """Analyzer ``name``'s result on the finished runs (:class:`gnorm.components.Analysis`: its
        ``numbers``, ``tables`` and ``notes``), the same as ``gnorm analyze --analyzer NAME --set
        KEY=VALUE`` prints. ``options`` are checked as an ``[[analysis]]`` table's would be; a problem
        raises :class:`gnorm.errors.UserError` naming ``NAME.KEY``."""
        from gnorm.registry import UnknownComponent
        from gnorm.studies import analyzer_config, run_analyzer

        registry = _registry()
        try:
            registry.get("analyzer", name)
        except UnknownComponent as unknown:
            raise UserError([Problem("analyze", "", str(unknown))]) from None
        records = self._store.records()
        config = analyzer_config(registry, name, options, "analyze", records, self.stages) if options else None
        return run_analyzer(registry, name, config, records)

    def weights(self, run_id: str, at: str | int) -> Any:
        """Run ``run_id``'s weights at snapshot ``at`` (``"t_grok"``, ``"end"``, a step) as a ready
        single-model ``torch.nn.Module`` (``[snapshots]`` must have kept them)."""
        from gnorm.snapshots import load_module

        return load_module(self.directory, run_id, at)
