"""Observers (trackers) configured by ``[observers.<name>]`` tables: strictly structured with their
plugin's config class, built only when the file names them, told the lifecycle events the hooks are
told, never part of a run's id, and a tracker that raises costs no stored result."""

from __future__ import annotations

import io
import json
from pathlib import Path

import attrs
import pytest
from click.testing import CliRunner

import gnorm
from builders import FREE, clamp_stage, write_study
from gnorm.cli import main
from gnorm.errors import UserError
from gnorm.loader import load_experiment
from gnorm.observers import observer_choices
from gnorm.progress import Progress
from gnorm.registry import Provider, build_registry
from gnorm.scheduler import run_experiment
from gnorm.store import Store

RECORDER = Provider("gnorm-recorder", "0.3")


@attrs.frozen
class RecorderConfig:
    label: str = "default"
    fail_in: str = ""          # the event whose method raises
    fail_at_start: bool = False


class RecorderPlugin:
    """An observer plugin (``recorder``) and a plain lifecycle-hook plugin in one: both write what
    they hear to ``events``."""

    def __init__(self, hook_fails_in: str = ""):
        self.events: list[tuple] = []
        self.built: list[RecorderConfig] = []
        self.hook_fails_in = hook_fails_in

    def hook_event(self, event: str, *values) -> None:
        self.events.append(("hook", event, *values))
        if event == self.hook_fails_in:
            raise RuntimeError(f"hook broke in {event}")

    @gnorm.hookimpl
    def gnorm_observers(self):
        plugin = self

        class Recorder:
            def __init__(self, config, context):
                if config.fail_at_start:
                    raise ConnectionError("no tracking server at localhost:1")
                plugin.built.append(config)
                self.config, self.context = config, context

            def record(self, event, *values):
                plugin.events.append(("observer", event, *values))
                if event == self.config.fail_in:
                    raise ValueError(f"tracker broke in {event}")

            def before_study(self, results_dir, experiment, runs):
                self.record("before_study", experiment, runs)

            def before_run(self, run_id, cell_label, critical_norm):
                self.record("before_run", run_id)

            def after_evaluation(self, run_id, step, metrics):
                self.record("after_evaluation", run_id, step, metrics["test_acc"])

            def after_run(self, record):
                self.record("after_run", record.run_id)

            def after_study(self, done, failed, **rest):
                self.record("after_study", done, failed)

        return [gnorm.Observer(name="recorder", summary="records every event", config_class=RecorderConfig,
                               factory=Recorder)]

    @gnorm.hookimpl
    def gnorm_before_study(self, experiment, runs):
        self.hook_event("before_study", experiment, runs)

    @gnorm.hookimpl
    def gnorm_before_run(self, run_id):
        self.hook_event("before_run", run_id)

    @gnorm.hookimpl
    def gnorm_after_evaluation(self, run_id, step, metrics):
        self.hook_event("after_evaluation", run_id, step, metrics["test_acc"])

    @gnorm.hookimpl
    def gnorm_after_run(self, record):
        self.hook_event("after_run", record.run_id)

    @gnorm.hookimpl
    def gnorm_after_study(self, done, failed):
        self.hook_event("after_study", done, failed)


def _study(tmp_path: Path, observers: dict | None = None) -> Path:
    """One free cell and one clamp cell of one seed each, 200 steps at p = 31 (about a second each)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    return write_study(tmp_path, experiment={"seeds": 1}, task={"p": 31}, training={"max_steps": 200},
                       executor={"name": "serial"}, observers=observers, stages=[FREE, clamp_stage(30.0, rhos=[1.1])])


def _run(tmp_path: Path, plugin: RecorderPlugin, observers: dict | None = None):
    registry = build_registry(extra_plugins=[(plugin, RECORDER)], autoload=False)
    experiment = load_experiment(_study(tmp_path, observers), registry)
    printed = io.StringIO()
    problems = run_experiment(experiment, registry, Store(tmp_path / "out", create=True), Progress(printed))
    return experiment, problems, printed.getvalue()


def _of(events, who):
    return [event[1:] for event in events if event[0] == who]


def test_an_observer_hears_every_event_the_hooks_hear_in_the_same_order(tmp_path):
    plugin = RecorderPlugin()
    experiment, problems, _ = _run(tmp_path, plugin, {"recorder": {"label": "mine"}})
    assert problems == []
    assert plugin.built == [RecorderConfig(label="mine")]
    heard, hooked = _of(plugin.events, "observer"), _of(plugin.events, "hook")
    assert heard == hooked
    store = Store(tmp_path / "out")
    runs = sorted(r.run_id for r in store.records())
    assert heard[0] == ("before_study", experiment.meta.name, 2) and heard[-1] == ("after_study", 2, 0)
    assert sorted(event[1] for event in heard if event[0] == "before_run") == runs
    for run_id in runs:
        trajectory = store.trajectory(run_id)
        assert [event[2:] for event in heard if event[0] == "after_evaluation" and event[1] == run_id] == [
            (step, acc) for step, acc in zip(trajectory["step"], trajectory["test_acc"])]


def test_an_observer_runs_only_when_the_file_names_it_and_an_empty_table_means_its_defaults(tmp_path):
    plugin = RecorderPlugin()
    _run(tmp_path / "unnamed", plugin)
    assert plugin.built == [] and _of(plugin.events, "observer") == []
    plugin = RecorderPlugin()
    _run(tmp_path / "empty", plugin, {"recorder": {}})
    assert plugin.built == [RecorderConfig()]
    assert _of(plugin.events, "observer")[-1] == ("after_study", 2, 0)


def test_observer_tables_never_change_a_run_id(tmp_path):
    registry = build_registry(extra_plugins=[(RecorderPlugin(), RECORDER)], autoload=False)
    plain = load_experiment(_study(tmp_path / "a"), registry)
    tracked = load_experiment(_study(tmp_path / "b", {"recorder": {"label": "x"}}), registry)
    assert [r.run_id for r in plain.runs] == [r.run_id for r in tracked.runs]
    assert [r.cell_id for r in plain.runs] == [r.cell_id for r in tracked.runs]
    assert all("observers" not in json.dumps(r.plain()) for r in tracked.runs)
    elsewhere = load_experiment(_study(tmp_path / "c", {"recorder": {}}), build_registry(autoload=False))
    assert [r.run_id for r in elsewhere.runs] == [r.run_id for r in plain.runs]  # read where it is not installed


def test_adding_an_observer_to_a_finished_study_trains_and_announces_nothing(tmp_path):
    _run(tmp_path, RecorderPlugin())
    stored = sorted(r.run_id for r in Store(tmp_path / "out").records())
    plugin = RecorderPlugin()
    _, problems, _ = _run(tmp_path, plugin, {"recorder": {}})
    assert problems == [] and sorted(r.run_id for r in Store(tmp_path / "out").records()) == stored
    assert _of(plugin.events, "observer") == [("before_study", "tiny", 0), ("after_study", 0, 0)]


def test_a_tracker_that_raises_mid_study_is_reported_once_and_every_run_is_still_stored(tmp_path):
    plugin = RecorderPlugin()
    _, problems, printed = _run(tmp_path, plugin, {"recorder": {"fail_in": "after_evaluation"}})
    assert len(Store(tmp_path / "out").records()) == 2
    [line] = problems
    assert line.startswith("observer recorder failed in after_evaluation (run ")
    assert "ValueError: tracker broke in after_evaluation" in line and "the runs are still stored" in line
    assert printed.count("tracker broke") == 1
    heard = _of(plugin.events, "observer")
    assert [event[0] for event in heard] == ["before_study", "before_run", "after_evaluation", "after_study"]
    assert _of(plugin.events, "hook")[-1] == ("after_study", 2, 0)  # the other listeners hear everything
    assert len([e for e in _of(plugin.events, "hook") if e[0] == "after_run"]) == 2


def test_a_plain_lifecycle_hook_that_raises_costs_no_result_either(tmp_path):
    plugin = RecorderPlugin(hook_fails_in="after_run")
    _, problems, _ = _run(tmp_path, plugin)
    assert len(Store(tmp_path / "out").records()) == 2
    [line] = problems
    assert line.startswith("plugin gnorm-recorder:extra0 failed in after_run (run ")
    hooked = _of(plugin.events, "hook")
    assert [event[0] for event in hooked].count("after_run") == 1 and hooked[-1] == ("after_study", 2, 0)


def test_an_observer_that_cannot_start_stops_the_study_before_anything_trains(tmp_path):
    plugin = RecorderPlugin()
    with pytest.raises(UserError) as raised:
        _run(tmp_path, plugin, {"recorder": {"fail_at_start": True}})
    [problem] = raised.value.problems
    assert problem.source.endswith("tiny.toml") and problem.key == "observers.recorder"
    assert "could not start: ConnectionError: no tracking server at localhost:1" in problem.message
    assert Store(tmp_path / "out").records() == [] and plugin.events == []


@pytest.mark.parametrize("observers, key, words", [
    ({"recorde": {}}, "observers.recorde", ["unknown observer 'recorde'", "did you mean 'recorder'", "known: recorder"]),
    ({"recorder": {"lable": "x"}}, "observers.recorder.lable", ["did you mean 'label'"]),
    ({"recorder": {"fail_at_start": "no"}}, "observers.recorder.fail_at_start", ["expected true or false"]),
    ({"recorder": 3}, "observers.recorder", ["expected a table of recorder's options"]),
])
def test_a_bad_observer_table_is_one_line_naming_the_file_and_key(tmp_path, observers, key, words):
    registry = build_registry(extra_plugins=[(RecorderPlugin(), RECORDER)], autoload=False)
    with pytest.raises(UserError) as raised:
        observer_choices(load_experiment(_study(tmp_path, observers), registry), registry)
    [problem] = raised.value.problems
    assert problem.source.endswith("tiny.toml") and problem.key == key
    assert all(word in problem.message for word in words), problem.message


def test_gnorm_run_and_validate_refuse_a_bad_observer_table_with_exit_2_and_write_nothing(tmp_path, monkeypatch):
    registry = build_registry(extra_plugins=[(RecorderPlugin(), RECORDER)], autoload=False)
    monkeypatch.setattr("gnorm.registry.default_registry", lambda: registry)
    path = _study(tmp_path, {"tensorbord": {}})
    for command in (["run", str(path), "--out", str(tmp_path / "out")], ["run", str(path), "--dry-run"],
                    ["validate", str(path)]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        [line] = [line for line in result.stderr.splitlines() if "observers.tensorbord" in line]
        assert line.startswith(f"error: {path}: observers.tensorbord: unknown observer 'tensorbord'") and "recorder" in line
    assert not (tmp_path / "out").exists()
    assert "expected a table" in CliRunner().invoke(main, ["validate", str(path), "--set", "observers=3"]).stderr
    named = CliRunner().invoke(main, ["validate", str(_study(tmp_path / "ok", {"recorder": {}})),
                                      "--set", "observers.recorder.lable=x"])
    assert named.exit_code == 2 and named.stderr.startswith(
        "error: --set: observers.recorder.lable: unknown key (did you mean 'label'?)"), named.stderr


def test_gnorm_plugins_lists_an_observer_component_as_kind_observer(monkeypatch):
    registry = build_registry(extra_plugins=[(RecorderPlugin(), RECORDER)], autoload=False)
    monkeypatch.setattr("gnorm.registry.default_registry", lambda: registry)
    listing = json.loads(CliRunner().invoke(main, ["plugins", "--json"]).stdout)
    assert {"kind": "observer", "name": "recorder", "package": "gnorm-recorder", "version": "0.3",
            "summary": "records every event"} in listing["components"]
    [line] = [line for line in CliRunner().invoke(main, ["plugins"]).stdout.splitlines()
              if line.split()[:2] == ["observer", "recorder"]]
    assert "gnorm-recorder 0.3" in line


def test_an_observer_method_that_needs_an_argument_no_event_gives_is_refused_when_it_is_built():
    from gnorm.observers import observer_listener

    class Greedy:
        def before_run(self, run_id, learning_rate):
            pass

        def after_run(self, record, extra=None, **everything):
            pass

    with pytest.raises(TypeError, match=r"before_run\(\) requires learning_rate, which gnorm does not give"):
        observer_listener("greedy", Greedy())

    class Modest:
        def after_evaluation(self, step, metrics, note="kept"):
            pass

        def after_run(self, **everything):
            pass

    listener = observer_listener("modest", Modest())
    assert listener.methods["after_evaluation"][1] == ("step", "metrics") and listener.methods["after_run"][1] is None
    assert set(listener.methods) == {"after_evaluation", "after_run"}
