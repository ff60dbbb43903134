"""What the command line and the Python API (``gnorm.api``) share: reading an experiment (a file, or a
dict with the file's schema) with its ``--set`` overrides, where its results go, and choosing and
configuring the analyzers run on a store."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from gnorm.errors import Problem, UserError

if TYPE_CHECKING:
    from gnorm.components import Analysis, RunRecord
    from gnorm.registry import Registry
    from gnorm.runmodel import ComponentChoice, Experiment
    from gnorm.store import Store

#: The analyzers ``gnorm analyze`` runs when neither ``--analyzer`` nor the stored file names any.
DEFAULT_ANALYZERS = ("critical_norm", "delay_law")


def parse_overrides(texts: Iterable[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` texts as dotted key -> TOML value; every malformed one names ``--set``."""
    from gnorm.overrides import parse_override

    parsed, problems = {}, []
    for text in texts:
        try:
            key, value = parse_override(text)
            parsed[key] = value
        except UserError as error:
            problems += error.problems
    if problems:
        raise UserError(problems)
    return parsed


def load(experiment: str | Path | Mapping[str, Any], registry: Registry,
         overrides: Mapping[str, Any] | None = None) -> Experiment:
    """An experiment file (a path) or its data (a dict, named ``<dict>`` in problems), read, checked
    and expanded with ``overrides`` (dotted key -> value, as ``--set`` gives them) by the loader."""
    from gnorm.loader import load_experiment
    from gnorm.toml_text import DICT_SOURCE, toml_document

    if isinstance(experiment, Mapping):
        return load_experiment(DICT_SOURCE, registry, dict(overrides or {}), text=toml_document(dict(experiment)))
    if not isinstance(experiment, (str, Path)):
        raise UserError([Problem("experiment", "", f"expected a path or a dict, found a "
                                                   f"{type(experiment).__name__}")])
    return load_experiment(experiment, registry, dict(overrides or {}))


def results_directory(experiment: Experiment, out: str | Path | None) -> Path:
    """Where a study's results go: ``out``, else ``experiment.output_dir``, else runs/<experiment.name>."""
    return Path(out or experiment.meta.output_dir or Path("runs") / experiment.meta.name)


def stored_analyses(store: Store, registry: Registry, warn: Callable[[str], None]) -> list[ComponentChoice]:
    """The ``[[analysis]]`` choices of the experiment file as it was run (not as it may read now); none,
    with a warning, where that file no longer loads here (a plugin it used is not installed)."""
    from gnorm.loader import load_experiment

    text, source = store.meta("experiment_toml"), store.meta("source")
    if not (text and source):
        return []
    try:
        return load_experiment(source, registry, text=text).analyses
    except UserError as error:
        warn(f"the stored experiment file does not load here ({error.problems[0]}); using the default analyses")
        return []


def options_by_analyzer(names: list[str], settings: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``--set`` analyzer options shared out over the analyzers run (``names``): ``NAME.KEY=VALUE`` sets
    KEY of analyzer NAME; a bare ``KEY=VALUE`` sets KEY of the only analyzer run, and is refused,
    naming ``--set``, when several run."""
    from gnorm.overrides import set_dotted

    chosen: dict[str, dict[str, Any]] = {name: {} for name in names}
    problems = []
    for key, value in settings.items():
        first, _, rest = key.partition(".")
        if first in chosen and rest:
            name, option = first, rest
        elif len(chosen) == 1:
            name, option = names[0], key
        else:
            problems.append(Problem("--set", key, f"{len(chosen)} analyzers run ({', '.join(chosen)}): write "
                                                  f"NAME.{key}, e.g. --set {names[0]}.{key}=..."))
            continue
        why = set_dotted(chosen[name], option, value)
        if why is not None:
            problems.append(Problem("--set", key, why))
    if problems:
        raise UserError(problems)
    return chosen


def analyzer_config(registry: Registry, name: str, options: Mapping[str, Any], source: str,
                    records: list[RunRecord], stage_names: list[str]) -> Any:
    """Analyzer ``name``'s config structured from ``options`` exactly as an ``[[analysis]]`` table's
    would be (unknown keys, wrong types, stages and run keys that no run has are refused); each problem
    names ``source`` and ``NAME.KEY``."""
    from gnorm.analysis_options import analysis_choice
    from gnorm.loader import Loader

    loader = Loader(source, registry)
    choice = analysis_choice(loader, {**options, "name": name}, name, stage_names, lambda: record_keys(records))
    if loader.problems:
        raise UserError(loader.problems)
    return choice.config


def record_keys(records: list[RunRecord]) -> set[str]:
    """Every dotted config key some stored run has."""
    from gnorm.analysis_options import dotted_keys

    return dotted_keys(record.config for record in records)


def unstructured_options(config: Any) -> dict[str, Any]:
    """An analyzer's structured config as the table that would give it (to lay ``--set`` keys over)."""
    from gnorm.converter import converter

    options = converter.unstructure(config) if config is not None else {}
    return dict(options) if isinstance(options, dict) else {}


def run_analyzer(registry: Registry, name: str, config: Any, records: list[RunRecord]) -> Analysis:
    """Analyzer ``name`` run on ``records`` with ``config`` (None: its defaults)."""
    analyzer = registry.get("analyzer", name)
    return analyzer.factory(config if config is not None else analyzer.config_class())(records)
