"""The ``gnorm`` command: run | validate | plugins | show | analyze | export | report | import | examples,
and the commands plugins add through ``gnorm_commands`` (gnorm-bench adds ``bench``).

Every command answers bad input with one line per problem (``error: <where>: <key>: <message>``) and
exit status 2, and a Ctrl-C anywhere with one ``interrupted`` line and exit status 130. Reading
commands (show, analyze, export, report) open the store read-only. The heavy modules (torch and the
plugins) are imported inside the commands, where a Ctrl-C is caught too; plugins' commands are looked
up only for ``gnorm --help`` or a name gnorm itself does not have, and ``gnorm run``'s executor options
only when ``run`` parses its arguments.
"""

from __future__ import annotations

import errno
import json
import sqlite3
import sys
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import attrs
import click

from gnorm import __version__
from gnorm.cli_examples import examples
from gnorm.completion import component_names
# The commands' writing helpers live in gnorm.cli_output; imported under the names cli.py always used.
from gnorm.cli_output import STDOUT, check_json_option as _check_json_option, output_directory as _output_directory
from gnorm.cli_output import output_file as _output_file  # noqa: F401
from gnorm.cli_output import table_text as _table_text, write_json as _write_json, write_text as _write_text
from gnorm.errors import Problem, UserError, write_failure

if TYPE_CHECKING:
    from gnorm.components import Analysis
    from gnorm.registry import Registry
    from gnorm.runmodel import Experiment
    from gnorm.store import Store

#: Exit status after a Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED = 130


def _echo_problems(error: UserError) -> None:
    for problem in error.problems:
        click.echo(f"error: {problem}", err=True)


def reports_user_errors(command: Callable) -> Callable:
    """Bad input ends in one line per problem on stderr and exit status 2, never a traceback."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except UserError as error:
            _echo_problems(error)
            sys.exit(2)
    return wrapper


def disk_full_problem(error: BaseException) -> UserError | None:
    """A full disk met outside the store's own writes (SQLite's "database or disk is full", or OSError
    ENOSPC) as one line naming the file; None for any other error."""
    if isinstance(error, sqlite3.OperationalError) and "full" in str(error):
        return UserError(f"the disk is full (SQLite: {error}); what was stored before stays stored: free some "
                         "space and run the same command again")
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return write_failure("", error.filename or "(a file)", error)
    return None


class GnormGroup(click.Group):
    """The command group: a Ctrl-C in any command (importing, loading plugins, reading, printing) is
    one ``interrupted`` line and exit status 130; a UserError or a full disk is one line per problem and
    exit status 2. Beside gnorm's own commands it holds the ones plugins add (``gnorm_commands``),
    collected the first time they are needed."""

    plugin_commands: dict[str, click.Command] | None = None

    def _plugin_commands(self) -> dict[str, click.Command]:
        if self.plugin_commands is None:
            self.plugin_commands = collect_plugin_commands(set(self.commands))
        return self.plugin_commands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self._plugin_commands()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        return self._plugin_commands().get(cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            command = ctx.invoked_subcommand or "command"
            click.echo(f"\ninterrupted: gnorm {command} stopped; nothing already stored was lost", err=True)
            ctx.exit(INTERRUPTED)
        except UserError as error:
            _echo_problems(error)
            ctx.exit(2)
        except (sqlite3.OperationalError, OSError) as error:
            full = disk_full_problem(error)
            if full is None:
                raise
            _echo_problems(full)
            ctx.exit(2)


def collect_plugin_commands(taken: set[str]) -> dict[str, click.Command]:
    """The subcommands third-party plugins add through ``gnorm_commands``, each into a group of its own
    so one plugin's mistakes stay its own. A name gnorm (or an earlier plugin) already has, or a hook
    that raises, is a warning and that command or plugin is left out."""
    from gnorm.registry import command_plugins

    plugin_manager, failures = command_plugins()
    for failure in failures:
        click.echo(f"warning: plugin {failure.entry_point} from {failure.provider} failed to load and was "
                   f"skipped: {failure.error}", err=True)
    commands: dict[str, click.Command] = {}
    for implementation in plugin_manager.hook.gnorm_commands.get_hookimpls():
        group = click.Group("gnorm")
        try:
            implementation.function(**({"cli": group} if implementation.argnames else {}))
        except (Exception, SystemExit) as error:
            click.echo(f"warning: plugin {implementation.plugin_name}: gnorm_commands failed and its commands "
                       f"were skipped: {type(error).__name__}: {error}", err=True)
            continue
        for name, command in group.commands.items():
            if name in taken or name in commands:
                click.echo(f"warning: plugin {implementation.plugin_name}: command {name!r} is taken; skipped",
                           err=True)
                continue
            commands[name] = command
    return commands


def _registry() -> Registry:
    from gnorm.registry import default_registry

    registry = default_registry()
    for failure in registry.failures:
        click.echo(f"warning: plugin {failure.entry_point} from {failure.provider} failed to load and was "
                   f"skipped: {failure.error}", err=True)
    return registry


def _load(path: str, overrides: tuple[str, ...]) -> tuple[Experiment, Registry]:
    from gnorm.studies import load, parse_overrides

    parsed = parse_overrides(overrides)
    registry = _registry()
    return load(path, registry, parsed), registry


@click.group(cls=GnormGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gnorm")
def main() -> None:
    """Run and analyse weight-norm interventions in grokking."""


#: Where the values of executor-contributed options arrive in ``run``'s keyword arguments.
EXECUTOR_OPTION_PREFIX = "executor_option_"


class RunCommand(click.Command):
    """``gnorm run``: its own options, plus each registered executor's declared ``options``
    (:class:`gnorm.ExecutorOption`), added when the command parses its arguments (which builds the
    plugin registry, as the run itself does)."""

    _built_for: tuple[Any, list[click.Option]] | None = None

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        own = super().get_params(ctx)
        from gnorm.registry import default_registry

        registry = default_registry()
        if self._built_for is None or self._built_for[0] is not registry:
            self._built_for = (registry, executor_options(registry, {f for p in own for f in p.opts}))
        help_option = self.get_help_option(ctx)
        return [p for p in own if p is not help_option] + self._built_for[1] + [p for p in own if p is help_option]


def executor_options(registry: Registry, taken: set[str]) -> list[click.Option]:
    """One click option per distinct flag the registered executors declare, named
    ``executor_option_<key>``. A flag ``gnorm run`` has itself, one declared with two keys, or one that is
    no ``--long-option`` is refused, naming the executor and its package."""
    import re

    from gnorm.registry import WAY_OUT_ONE

    declared: dict[str, tuple[str, list[str], Any]] = {}  # flag -> key, executor names, first option
    problems: list[Problem] = []
    for entry in registry.entries():
        for option in getattr(entry.component, "options", ()):
            where = f"executor {entry.component.name!r} ({entry.provider})"
            if not re.fullmatch(r"--[a-z0-9][a-z0-9-]*", option.flag) or not option.key.isidentifier():
                problems.append(Problem("plugins", where, f"option {option.flag!r} (key {option.key!r}): expected a "
                                        f"flag like --scheduler and a key like scheduler; {WAY_OUT_ONE}"))
            elif option.flag in taken:
                problems.append(Problem("plugins", where, f"option {option.flag} is one of gnorm run's own; "
                                        f"{WAY_OUT_ONE}"))
            elif option.flag in declared and declared[option.flag][0] != option.key:
                problems.append(Problem("plugins", where, f"option {option.flag} sets executor.{option.key}, but "
                                        f"executor {declared[option.flag][1][0]!r} declares it for "
                                        f"executor.{declared[option.flag][0]}; {WAY_OUT_ONE}"))
            else:
                declared.setdefault(option.flag, (option.key, [], option))[1].append(entry.component.name)
    if problems:
        raise UserError(problems)
    return [click.Option([flag, EXECUTOR_OPTION_PREFIX + key], metavar=option.metavar,
                         help=f"{option.help} (sets executor.{key}; executor {', '.join(names)})")
            for flag, (key, names, option) in declared.items()]


def _with_executor_options(experiment: Experiment, name: str | None, options: dict[str, Any]) -> Experiment:
    """The experiment with ``--executor NAME`` and the executor options given on the command line, each
    setting ``executor.<key>`` (read as a TOML value, as ``--set`` reads one)."""
    from gnorm.executor_table import with_executor
    from gnorm.overrides import parse_override

    experiment = with_executor(experiment, name, scheduler=None)
    given = dict(parse_override(f"{key}={value}") for key, value in options.items() if value is not None)
    return attrs.evolve(experiment, executor={**experiment.executor, **given}) if given else experiment


@main.command(cls=RunCommand)
@click.argument("experiment_file", type=click.Path())
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Results directory "
              "(default: experiment.output_dir, else runs/<experiment.name>).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override any key of the file, e.g. --set task.p=59 --set stage.clamp.seeds=2 (a stage by "
                   "name or 0-based index; repeatable).")
@click.option("--dry-run", is_flag=True, help="Print the expanded list of runs and exit.")
@click.option("--executor", "executor_name", metavar="NAME", shell_complete=component_names("executor"),
              help="Where cells train (default: the file's [executor] table, else local); see gnorm plugins. "
                   "Executors may add options of their own, listed below.")
@reports_user_errors
def run(experiment_file: str, out_dir: str | None, overrides: tuple[str, ...], dry_run: bool,
        executor_name: str | None, **executor_options: Any) -> None:
    """Run every stage of EXPERIMENT_FILE; finished runs already in the store are skipped, runs stored
    as failed are tried again."""
    from gnorm.analysis.records import cell_label
    from gnorm.executor_table import executor_choice
    from gnorm.interrupts import noting_interrupts, raise_if_interrupted
    from gnorm.observers import observer_choices
    from gnorm.store import Store

    experiment, registry = _load(experiment_file, overrides)
    experiment = _with_executor_options(experiment, executor_name,
                                        {key[len(EXECUTOR_OPTION_PREFIX):]: value
                                         for key, value in executor_options.items()})
    executor = executor_choice(experiment, registry)
    observers = observer_choices(experiment, registry)  # the [observers.<name>] tables, before anything is written
    if dry_run:
        from gnorm.planner import plan_experiment

        plan_experiment(experiment)  # a dry run refuses what the real run would refuse
        for stage in experiment.stages:
            for spec in stage.runs:
                click.echo(f"{spec.run_id}  stage={stage.name}  {cell_label(spec.cell)}  seed={spec.seed}  "
                           f"controller={spec.controller.name}  max_steps={spec.training.max_steps}")
        click.echo(f"{len(experiment.runs)} runs in {len(experiment.stages)} stages")
        return
    from gnorm.adaptive_stage import run_study
    from gnorm.progress import Progress

    from gnorm.studies import results_directory

    directory = results_directory(experiment, out_dir)
    store = Store(directory, create=True)
    with store.exclusive(), noting_interrupts():
        click.echo(f"gnorm {__version__}: {experiment.source} -> {directory}", err=True)
        try:
            skipped = run_study(experiment, registry, store, Progress(), executor, observers)
            ran = _print_summary(store, experiment, registry)
            for line in skipped:
                click.echo(f"error: {line}", err=True)
            if ran is not None:
                from gnorm.report import write_report

                written = write_report(store, directory / "report", registry, experiment.analyses, ran)
                click.echo(f"report: {written.path}", err=True)
            raise_if_interrupted()  # a Ctrl-C swallowed on the way still ends the command as interrupted
        except KeyboardInterrupt:
            click.echo("\n" + _interrupted_run(store, experiment, directory), err=True)
            sys.exit(INTERRUPTED)
    if skipped:
        sys.exit(1)


def _interrupted_run(store: Store, experiment: Experiment, directory: Path) -> str:
    """The line a Ctrl-C during ``gnorm run`` ends with: how many of the file's runs are stored."""
    planned = {r.run_id for r in experiment.runs}
    try:
        done = len(store.finished_run_ids() & planned)
    except UserError:
        return f"interrupted: the runs finished so far are stored in {directory}; run the same command again"
    if done == len(planned):
        return (f"interrupted: all {done} runs are stored in {directory}; gnorm show {directory} prints the "
                "summary")
    return (f"interrupted: {done}/{len(planned)} runs are stored in {directory}; run the same command again to "
            "finish the rest")


def _print_summary(store: Store, experiment: Experiment, registry: Registry) -> list | None:
    """Print the stage tables and the file's ``[[analysis]]`` tables; return every analysis the report
    shows (run once, for the summary and the report alike), or None when no report is due."""
    from gnorm.planner import planned_cells
    from gnorm.tables import format_table, stage_summaries

    records = store.records()
    for table in stage_summaries(records, planned_cells(store.plan())):
        click.echo("\n" + format_table(table))
    if not experiment.analyses:
        return None
    from gnorm.report import run_report_analyses  # matplotlib: only a file with analyses pays for it

    ran = run_report_analyses(records, registry, experiment.analyses, sections=bool(records))
    for reported in ran:
        if reported.from_file:
            _echo_analysis(reported.analysis)
    return ran if records else None


def _echo_analysis(analysis: Analysis, err: bool = False) -> None:
    from gnorm.tables import format_table

    for table in analysis.tables:
        click.echo("\n" + format_table(table), err=err)
    for note in analysis.notes:
        click.echo(f"note: {note}", err=err)


@main.command()
@click.argument("experiment_file", type=click.Path())
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override any key of the file.")
@reports_user_errors
def validate(experiment_file: str, overrides: tuple[str, ...]) -> None:
    """Check EXPERIMENT_FILE without running it."""
    experiment, _ = _load(experiment_file, overrides)
    from gnorm.planner import plan_experiment

    from gnorm.executor_table import executor_choice
    from gnorm.observers import observer_choices

    plan = plan_experiment(experiment)
    executor_choice(experiment, _registry())  # the [executor] table is checked too
    observer_choices(experiment, _registry())  # and the [observers.<name>] tables
    click.echo(f"{experiment_file}: ok, {len(experiment.runs)} runs in {len(plan.cells)} cells, "
               f"{len(experiment.stages)} stages")


@main.command()
@click.option("--json", "json_path", is_flag=False, flag_value=STDOUT, metavar="[FILE|-]",
              help="Machine-readable output, to FILE or (alone, or -) to standard output.")
@reports_user_errors
def plugins(json_path: str | None) -> None:
    """List every component: kind, name, provider package and version, summary."""
    _check_json_option(json_path)
    registry = _registry()
    entries = [{"kind": e.component.kind, "name": e.component.name, "package": e.provider.package,
                "version": e.provider.version, "summary": e.component.summary} for e in registry.entries()]
    entries += plugin_rows(registry)
    failures = [{"entry_point": f.entry_point, "package": f.provider.package, "version": f.provider.version,
                 "error": f.error} for f in registry.failures]
    if json_path:
        _write_json(json_path, {"components": entries, "failures": failures})
        return
    from gnorm.components import Table
    from gnorm.tables import format_table

    click.echo(format_table(Table("gnorm components", ["kind", "name", "package", "summary"],
                                  [[e["kind"], e["name"], f"{e['package']} {e['version']}", e["summary"]]
                                   for e in entries])))


def plugin_rows(registry: Registry) -> list[dict[str, Any]]:
    """Rows for the plugins that act through hooks rather than components: kind ``observer`` for one
    implementing lifecycle hooks (a tracker), ``command`` for one adding subcommands; named by module."""
    from gnorm.registry import COMMAND_HOOK

    rows = []
    for plugin in registry.plugins:
        for kind, hooks in (("observer", plugin.observes),
                            ("command", tuple(h for h in plugin.hooks if h == COMMAND_HOOK))):
            if hooks:
                rows.append({"kind": kind, "name": plugin.module, "package": plugin.provider.package,
                             "version": plugin.provider.version,
                             "summary": plugin.summary or f"implements {', '.join(hooks)}", "hooks": list(hooks)})
    return rows


def _open(directory: str) -> Store:
    """DIRECTORY's store, read-only: a reading command creates and changes no file there."""
    from gnorm.store import Store

    return Store(directory, read_only=True)


def _stored_analyses(store: Store, registry: Registry) -> list:
    """The ``[[analysis]]`` choices of the experiment file as it was run (see gnorm.studies)."""
    from gnorm.studies import stored_analyses

    return stored_analyses(store, registry, lambda line: click.echo(f"warning: {line}", err=True))


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--json", "json_path", metavar="FILE|-", help="Also write the tables and counts as JSON to FILE, "
              "or to standard output for - (the text then goes to standard error).")
@reports_user_errors
def show(directory: str, json_path: str | None) -> None:
    """Print a summary table per stage of the results in DIRECTORY."""
    from gnorm.analysis.records import cell_label
    from gnorm.planner import planned_cells
    from gnorm.snapshots import summary as snapshot_summary
    from gnorm.tables import format_table, stage_summaries

    _check_json_option(json_path)
    err = json_path == STDOUT
    store = _open(directory)
    records, plan, failed = store.records(), store.plan(), store.failed_runs()
    tables = stage_summaries(records, planned_cells(plan))
    for table in tables:
        click.echo(format_table(table) + "\n", err=err)
    for run in failed:
        click.echo(f"failed: [{run.stage}] {cell_label(run.cell)} seed {run.seed} after {run.attempts} attempts: "
                   f"{run.error}", err=err)
    missing = len(plan) - len(records) - len(failed)
    click.echo(f"{len(records)}/{len(plan)} planned runs finished"
               + (f", {len(failed)} failed (run the file again to retry them)" if failed else "")
               + (f", {missing} still to run" if missing else ""), err=err)
    snapshots = store.snapshots()
    if snapshots:
        click.echo(snapshot_summary(snapshots).line(), err=err)
    _write_json(json_path, {
        "stages": [attrs.asdict(table) for table in tables],
        "failed": [attrs.asdict(run) for run in failed],
        "planned": len(plan), "finished": len(records), "failed_count": len(failed), "to_run": missing,
        "snapshots": attrs.asdict(snapshot_summary(snapshots)) if snapshots else None})


def _known_analyzers(registry: Registry, names: tuple[str, ...]) -> None:
    """Refuse every ``--analyzer`` name no installed plugin gives, listing the known ones."""
    from gnorm.registry import UnknownComponent

    known = registry.names("analyzer")
    unknown = [Problem("--analyzer", "", str(UnknownComponent("analyzer", name, known)))
               for name in dict.fromkeys(names) if name not in known]
    if unknown:
        raise UserError(unknown)


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--analyzer", "names", multiple=True, help="Analyzer to run (repeatable; default: the file's "
              "[[analysis]] tables, else critical_norm and delay_law).", shell_complete=component_names("analyzer"))
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="An analyzer option, as an [[analysis]] table would set it (repeatable); with several "
                   "analyzers, NAME.KEY=VALUE, e.g. --set delay_law.min_grokked=2.")
@click.option("--json", "json_path", metavar="FILE|-", help="Also write every number to FILE, or to standard "
              "output for - (the tables then go to standard error).")
@reports_user_errors
def analyze(directory: str, names: tuple[str, ...], settings: tuple[str, ...], json_path: str | None) -> None:
    """Run analyzers on the results in DIRECTORY."""
    from gnorm.overrides import deep_merge
    from gnorm.studies import (DEFAULT_ANALYZERS, analyzer_config, options_by_analyzer, parse_overrides,
                               run_analyzer, unstructured_options)

    registry = _registry()
    _known_analyzers(registry, names)
    _check_json_option(json_path)
    err = json_path == STDOUT
    given = parse_overrides(settings)
    store = _open(directory)
    records = store.records()
    chosen = [(name, None) for name in dict.fromkeys(names)]
    chosen = chosen or [(a.name, a.config) for a in _stored_analyses(store, registry)]
    chosen = chosen or [(name, None) for name in DEFAULT_ANALYZERS]
    if given:
        options = options_by_analyzer([name for name, _ in chosen], given)
        stages = list(dict.fromkeys(stage for _, stage, _ in store.plan()))
        chosen = [(name, analyzer_config(registry, name, deep_merge(unstructured_options(config), options[name]), "--set",
                                         records, stages) if options[name] else config) for name, config in chosen]
    results = []
    for name, config in chosen:
        analysis = run_analyzer(registry, name, config, records)
        _echo_analysis(analysis, err=err)
        results.append({"analyzer": analysis.analyzer, "numbers": analysis.numbers, "notes": analysis.notes})
    _write_json(json_path, results)


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["csv", "json", "parquet"]), default="csv", show_default=True,
              help="parquet needs pyarrow (pip install 'gnorm[parquet]').")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Where to write (default DIRECTORY/export).")
@click.option("--snapshots", "with_snapshots", is_flag=True,
              help="Also copy the weight snapshots (snapshots/) and write their index, snapshots.json.")
@reports_user_errors
def export(directory: str, fmt: str, out_dir: str | None, with_snapshots: bool) -> None:
    """Write tidy tables of DIRECTORY's runs: runs.<fmt> (one row per run) and evaluations.<fmt>
    (one row per run and evaluated step); with --snapshots also the weight snapshots."""
    if fmt == "parquet":
        from gnorm.parquet import require_pyarrow

        require_pyarrow("--format")
    store = _open(directory)
    option = "--out" if out_dir else ""
    runs, evaluations = [], []
    for record in store.records():
        row = {"run_id": record.run_id, "stage": record.stage, "seed": record.seed, "t_mem": record.t_mem,
               "t_grok": record.t_grok, "censored": record.censored, "norm_at_grok": record.norm_at_grok,
               "budget": record.budget}
        row.update({f"cell.{k}": v for k, v in record.cell.items()})
        row.update({f"fact.{k}": v for k, v in record.facts.items()})
        row["config"] = json.dumps(record.config, sort_keys=True)
        runs.append(row)
        trajectory = store.trajectory(record.run_id)
        for i in range(len(trajectory["step"])):
            evaluations.append({"run_id": record.run_id, **{k: v[i] for k, v in trajectory.items()}})
    target = _output_directory(option, Path(out_dir or Path(directory) / "export"))
    for name, rows in (("runs", runs), ("evaluations", evaluations)):
        path = target / f"{name}.{fmt}"
        if fmt == "parquet":
            from gnorm.parquet import write_parquet

            write_parquet(option, path, rows)
        else:
            _write_text(option, path, _table_text(rows, fmt))
        click.echo(f"wrote {path} ({len(rows)} rows)")
    if with_snapshots:
        from gnorm.snapshots import export_snapshots
        click.echo(f"wrote {export_snapshots(directory, store.snapshots(), target, option)}")


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Where to write report.md and figures/ (default DIRECTORY/report).")
@reports_user_errors
def report(directory: str, out_dir: str | None) -> None:
    """Write a Markdown report of DIRECTORY: each analyzer's section (tables and figures, PNG and PDF)
    and the trajectories, where the data has them."""
    from gnorm.report import write_report

    registry = _registry()
    store = _open(directory)
    out = _output_directory("--out" if out_dir else "", Path(out_dir or Path(directory) / "report"))
    written = write_report(store, out, registry, _stored_analyses(store, registry))
    drawn = len([f for f in written.figures if f.suffix == ".png"])
    click.echo(f"wrote {written.path}: {drawn} figures (PNG and PDF)"
               + (f", {len(written.left_out)} left out (see the report)" if written.left_out else ""))


@main.command(name="import")
@click.argument("folders", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Results directory to write.")
@reports_user_errors
def import_(folders: tuple[str, ...], out_dir: str) -> None:
    """Read the papers' released per-seed results (one experiment folder each, e.g.
    ../shared/reference/paper-a/denserho) into a gnorm store, so that analyze and show run on them."""
    from gnorm.importers import import_reference
    from gnorm.store import Store

    missing = [Problem(folder, "", "no such folder") for folder in folders if not Path(folder).is_dir()]
    if missing:
        raise UserError(missing)
    store = Store(out_dir, create=True)
    with store.exclusive():
        for folder in folders:
            records = import_reference(folder, store)
            click.echo(f"imported {len(records)} runs from {folder}")


from gnorm.cli_plan import plan  # noqa: E402  (gnorm plan: its own module)

main.add_command(plan)
main.add_command(examples)  # gnorm examples list / copy, in its own module

if __name__ == "__main__":
    main()
