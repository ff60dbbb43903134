"""The plugin system: gnorm's own pieces arrive as plugins, misbehaving plugins are refused or reported
and skipped, and a separately installed package (plugins/gnorm-plugin-softclamp) adds a controller
that ``gnorm run`` can use."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import attrs
import pytest
import torch
from click.testing import CliRunner

import gnorm
from builders import FREE, write_study
from gnorm.cli import main
from gnorm.components import ControllerContext
from gnorm.errors import PluginError
from gnorm.registry import DISABLE_AUTOLOAD_ENV, Provider, build_registry, default_registry
from gnorm.science import weight_norm
from gnorm.store import Store

REPO = Path(__file__).resolve().parent.parent
SOFTCLAMP_DIR = REPO / "plugins" / "gnorm-plugin-softclamp"
SOFTCLAMP = Provider("gnorm-plugin-softclamp", "0.1.0")
GNORM_ITSELF = Provider("gnorm", gnorm.__version__)

BUILTINS = {
    ("task", "modular_addition"),
    ("task", "modular_multiplication"),
    ("architecture", "mlp"),
    ("norm_controller", "free"),
    ("norm_controller", "clamp"),
    ("grok_criterion", "test_accuracy"),
    ("analyzer", "critical_norm"),
    ("analyzer", "delay_law"),
    ("executor", "serial"),
    ("executor", "local"),
}


@attrs.frozen
class EmptyConfig:
    pass


def plugin_module(name: str, **hooks) -> types.ModuleType:
    """A plugin as a package ships it: a module whose functions are marked ``@gnorm.hookimpl``."""
    module = types.ModuleType(name)
    for hook_name, function in hooks.items():
        setattr(module, hook_name, gnorm.hookimpl(function))
    return module


def halve_controller() -> gnorm.NormController:
    return gnorm.NormController(name="halve", summary="halve the weights once", config_class=EmptyConfig,
                                factory=lambda config, context: None)


@pytest.fixture
def autoload_on(monkeypatch):
    monkeypatch.delenv(DISABLE_AUTOLOAD_ENV, raising=False)


@pytest.fixture
def fresh_default_registry():
    """The CLI's per-process registry, rebuilt for this test and forgotten after it."""
    default_registry.cache_clear()
    yield
    default_registry.cache_clear()


# ---------------------------------------------------------------------------------------------------
# Built-ins are plugins provided by the gnorm package.


def test_every_builtin_is_registered_as_provided_by_gnorm(autoload_on):
    registry = build_registry()
    providers = {(entry.component.kind, entry.component.name): entry.provider for entry in registry.entries()}
    assert {key: providers.get(key) for key in BUILTINS} == {key: GNORM_ITSELF for key in BUILTINS}
    assert not [failure for failure in registry.failures if failure.provider.package == "gnorm"]


def test_gnorm_plugins_json_lists_each_builtin_with_kind_package_version_and_summary(autoload_on,
                                                                                     fresh_default_registry):
    result = CliRunner().invoke(main, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    listing = json.loads(result.stdout)
    rows = {(row["kind"], row["name"]): row for row in listing["components"]}
    for kind, name in BUILTINS:
        row = rows[(kind, name)]
        assert (row["package"], row["version"]) == ("gnorm", gnorm.__version__)
        assert isinstance(row["summary"], str) and row["summary"].strip()
    assert isinstance(listing["failures"], list)


def test_a_source_checkout_without_install_metadata_has_every_builtin(autoload_on):
    """As from a bare clone on PYTHONPATH: importlib.metadata knows no gnorm distribution and no entry
    point, and the registry still holds every built-in, provided by gnorm."""
    code = (
        "import importlib.metadata as m, json\n"
        "def missing(name): raise m.PackageNotFoundError(name)\n"
        "m.version, m.entry_points = missing, lambda **selection: m.EntryPoints([])\n"
        "import gnorm\n"
        "from gnorm.registry import build_registry\n"
        "print(json.dumps([[e.component.kind, e.component.name, str(e.provider)] for e in build_registry().entries()]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, cwd=REPO)
    listed = {(kind, name): provider for kind, name, provider in json.loads(out.stdout)}
    builtins = {(e.component.kind, e.component.name) for e in build_registry(autoload=False).entries()}
    assert BUILTINS <= builtins
    assert listed == {key: "gnorm 0.0.0" for key in builtins}


def test_gnorm_plugins_lists_an_observer_only_plugin_with_its_package(monkeypatch):
    tracker = plugin_module("gnorm_tracker", gnorm_before_run=lambda run_id: None,
                            gnorm_after_run=lambda record: None)
    tracker.__doc__ = "gnorm-tracker: sends every run to a tracking server."
    registry = build_registry(extra_plugins=[(tracker, Provider("gnorm-tracker", "1.2"))], autoload=False)
    monkeypatch.setattr("gnorm.registry.default_registry", lambda: registry)
    listing = json.loads(CliRunner().invoke(main, ["plugins", "--json"]).stdout)
    assert [row for row in listing["components"] if row["kind"] == "observer"] == [
        {"kind": "observer", "name": "gnorm_tracker", "package": "gnorm-tracker", "version": "1.2",
         "summary": "gnorm-tracker: sends every run to a tracking server.",
         "hooks": ["gnorm_after_run", "gnorm_before_run"]}]
    table = CliRunner().invoke(main, ["plugins"]).stdout
    [line] = [line for line in table.splitlines() if line.startswith("observer")]
    assert line.split()[:4] == ["observer", "gnorm_tracker", "gnorm-tracker", "1.2"]


# ---------------------------------------------------------------------------------------------------
# The command hook: plugins add subcommands to gnorm.


class CommandEntryPoint:
    """An installed package's ``gnorm.commands`` entry point, as importlib.metadata gives it."""

    def __init__(self, module: types.ModuleType, package: str, version: str):
        self.module, self.name, self.value = module, module.__name__, module.__name__
        self.dist = types.SimpleNamespace(metadata={"Name": package}, version=version)

    def load(self) -> types.ModuleType:
        return self.module


def hello_plugin(command_name: str = "hello") -> types.ModuleType:
    import click

    def gnorm_commands(cli):
        @cli.command(name=command_name)
        @click.argument("who")
        def hello(who):
            """Say hello to WHO."""
            click.echo(f"hello {who}")

    return plugin_module(f"gnorm_{command_name}", gnorm_commands=gnorm_commands)


@pytest.fixture
def installed_commands(monkeypatch, autoload_on):
    """Install command plugins (their entry points) for this test; the CLI collects them afresh."""
    def install(*modules: types.ModuleType) -> None:
        points = [CommandEntryPoint(module, module.__name__.replace("_", "-"), "0.1") for module in modules]
        monkeypatch.setattr("gnorm.registry.entry_points", lambda group: points if group == "gnorm.commands" else [])
        monkeypatch.setattr(main, "plugin_commands", None)
    yield install


def test_a_plugin_adds_a_subcommand_that_gnorm_help_lists_and_gnorm_runs(installed_commands):
    installed_commands(hello_plugin())
    listed = CliRunner().invoke(main, ["--help"])
    assert listed.exit_code == 0 and "hello     Say hello to WHO." in listed.output
    said = CliRunner().invoke(main, ["hello", "world"])
    assert (said.exit_code, said.output) == (0, "hello world\n")


def test_a_plugin_command_cannot_take_the_name_of_one_of_gnorms_own(installed_commands):
    installed_commands(hello_plugin("show"), hello_plugin())
    listed = CliRunner().invoke(main, ["--help"])
    assert "warning: plugin gnorm-show:gnorm_show: command 'show' is taken; skipped" in listed.stderr
    assert "show      Print a summary table per stage" in listed.stdout and "hello " in listed.stdout


HELP_WITHOUT_TORCH = '''
import importlib.metadata as m, sys, types
plugin = types.ModuleType("gnorm_hello")
exec("""
import click, gnorm
@gnorm.hookimpl
def gnorm_commands(cli):
    @cli.command()
    def hello():
        "Say hello."
""", plugin.__dict__)
class Point:
    name = value = "gnorm_hello"
    dist = types.SimpleNamespace(metadata={"Name": "gnorm-hello"}, version="0.1")
    def load(self):
        return plugin
class HeavyPoint(Point):  # a component plugin that imports torch when loaded
    name = value = "gnorm_heavy"
    def load(self):
        import torch
        return types.ModuleType("gnorm_heavy")
groups = {"gnorm.commands": [Point()], "gnorm": [HeavyPoint()]}
m.entry_points = lambda **selection: groups.get(selection.get("group"), m.EntryPoints([]))
from gnorm.cli import main
try:
    main(["--help"])
except SystemExit:
    pass
print("torch imported" if "torch" in sys.modules else "no torch")
'''


def test_gnorm_help_imports_command_plugins_only_and_no_torch(autoload_on):
    """``gnorm --help`` loads the ``gnorm.commands`` entry points, never the component plugins (which
    may import torch at the top)."""
    out = subprocess.run([sys.executable, "-c", HELP_WITHOUT_TORCH], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert "hello     Say hello." in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "no torch"


# ---------------------------------------------------------------------------------------------------
# Plugins that misbehave: refused loudly when the plugin set is ambiguous or mistyped ...


def test_a_name_gnorm_already_gives_is_refused_naming_both_packages_and_versions():
    squatter = plugin_module("pkg_a", gnorm_tasks=lambda: [
        gnorm.Task(name="modular_addition", summary="another one", config_class=EmptyConfig, factory=object)])
    with pytest.raises(PluginError) as refused:
        build_registry(extra_plugins=[(squatter, Provider("pkg-a", "1.0"))], autoload=False)
    message = str(refused.value)
    assert "'modular_addition'" in message
    assert f"gnorm {gnorm.__version__}" in message and "pkg-a 1.0" in message


def test_two_third_party_packages_giving_one_name_are_both_named():
    first = plugin_module("pkg_a", gnorm_norm_controllers=lambda: [halve_controller()])
    second = plugin_module("pkg_b", gnorm_norm_controllers=lambda: [halve_controller()])
    with pytest.raises(PluginError, match=r"'halve'.*pkg-a 1\.0 and pkg-b 2\.0"):
        build_registry(extra_plugins=[(first, Provider("pkg-a", "1.0")), (second, Provider("pkg-b", "2.0"))],
                       autoload=False)


def test_a_misspelled_hook_is_refused_with_the_hook_it_probably_meant():
    typo = plugin_module("pkg_a", gnorm_norm_controller=lambda: [halve_controller()])
    with pytest.raises(PluginError) as refused:
        build_registry(extra_plugins=[(typo, Provider("pkg-a", "1.0"))], autoload=False)
    message = str(refused.value)
    assert "pkg-a 1.0" in message
    assert "unknown hook gnorm_norm_controller (did you mean gnorm_norm_controllers?)" in message


def test_a_hook_without_the_hookimpl_marker_is_refused_not_silently_ignored():
    unmarked = types.ModuleType("pkg_a")
    unmarked.gnorm_norm_controllers = lambda: [halve_controller()]
    with pytest.raises(PluginError, match="gnorm_norm_controllers is not marked with @gnorm.hookimpl"):
        build_registry(extra_plugins=[(unmarked, Provider("pkg-a", "1.0"))], autoload=False)


def test_a_hook_argument_the_hookspec_lacks_is_a_plugin_error_not_a_traceback():
    wrong_signature = plugin_module("pkg_a", gnorm_norm_controllers=lambda: [halve_controller()],
                                    gnorm_before_run=lambda run_id, stage_name: None)
    with pytest.raises(PluginError, match=r"pkg-a 1\.0.*gnorm_before_run.*stage_name"):
        build_registry(extra_plugins=[(wrong_signature, Provider("pkg-a", "1.0"))], autoload=False)


# ... and reported and skipped when only the plugin itself is broken.


def test_a_registration_hook_that_raises_is_reported_and_the_rest_still_load():
    def gnorm_tasks():
        raise RuntimeError("needs a dataset that is not downloaded")

    plugin = plugin_module("pkg_a", gnorm_tasks=gnorm_tasks, gnorm_norm_controllers=lambda: [halve_controller()])
    registry = build_registry(extra_plugins=[(plugin, Provider("pkg-a", "1.0"))], autoload=False)
    [failure] = registry.failures
    assert failure.provider == Provider("pkg-a", "1.0")
    assert "gnorm_tasks" in failure.entry_point
    assert failure.error == "RuntimeError: needs a dataset that is not downloaded"
    assert "halve" in registry.names("norm_controller")
    assert "modular_addition" in registry.names("task")


@pytest.fixture
def broken_distribution(tmp_path, monkeypatch, autoload_on) -> Provider:
    """An installed distribution (a .dist-info on sys.path) whose gnorm entry point fails to import."""
    site = tmp_path / "site-packages"
    dist_info = site / "gnorm_plugin_broken-0.3.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: gnorm-plugin-broken\nVersion: 0.3\n")
    (dist_info / "entry_points.txt").write_text("[gnorm]\nbroken = gnorm_plugin_broken\n")
    (site / "gnorm_plugin_broken.py").write_text("raise ImportError(\"No module named 'cupy'\")\n")
    monkeypatch.syspath_prepend(str(site))
    return Provider("gnorm-plugin-broken", "0.3")


def test_an_entry_point_that_fails_to_import_is_reported_and_skipped(broken_distribution):
    registry = build_registry()
    [failure] = [f for f in registry.failures if f.provider == broken_distribution]
    assert failure.entry_point == "gnorm_plugin_broken"
    assert failure.error == "ImportError: No module named 'cupy'"
    assert BUILTINS <= {(entry.component.kind, entry.component.name) for entry in registry.entries()}


def test_gnorm_plugins_reports_a_broken_package_and_still_succeeds(broken_distribution, fresh_default_registry):
    result = CliRunner().invoke(main, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    failures = json.loads(result.stdout)["failures"]
    assert {"entry_point": "gnorm_plugin_broken", "package": "gnorm-plugin-broken", "version": "0.3",
            "error": "ImportError: No module named 'cupy'"} in failures
    assert "gnorm-plugin-broken 0.3 failed to load and was skipped" in result.stderr


def test_disabling_autoload_ignores_every_third_party_package(broken_distribution, monkeypatch):
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    registry = build_registry()
    assert registry.failures == []
    assert {entry.provider for entry in registry.entries()} == {GNORM_ITSELF}
    assert BUILTINS <= {(entry.component.kind, entry.component.name) for entry in registry.entries()}


# ---------------------------------------------------------------------------------------------------
# The example plugin: soft_clamp.


@pytest.fixture
def soft_clamp(monkeypatch) -> gnorm.NormController:
    """The component the example plugin registers, imported from its source directory."""
    monkeypatch.syspath_prepend(str(SOFTCLAMP_DIR))
    [component] = importlib.import_module("gnorm_plugin_softclamp").gnorm_norm_controllers()
    return component


def stacked_norm_tensors() -> list[torch.Tensor]:
    """Three ensemble members' norm tensors (an embedding-like matrix and a vector), stacked."""
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(3, 5, 4, generator=generator, dtype=torch.float64),
            torch.randn(3, 7, generator=generator, dtype=torch.float64)]


def build(component: gnorm.NormController, critical_norm: float = 4.0, **options):
    return component.factory(component.config_class(**options), ControllerContext(critical_norm, num_members=3))


def test_soft_clamp_describes_itself_as_a_controller_of_the_critical_norm(soft_clamp):
    assert soft_clamp.name == "soft_clamp"
    assert soft_clamp.uses_critical_norm
    assert attrs.has(soft_clamp.config_class)


def test_soft_clamp_does_nothing_before_t_start(soft_clamp):
    tensors = stacked_norm_tensors()
    untouched = [tensor.clone() for tensor in tensors]
    assert build(soft_clamp, rho=1.5, t_start=10, strength=0.5).after_step(9, tensors) is None
    for tensor, original in zip(tensors, untouched):
        assert torch.equal(tensor, original)


def test_soft_clamp_with_strength_one_half_moves_each_norm_halfway_by_one_scalar_per_member(soft_clamp):
    tensors = stacked_norm_tensors()
    original = [tensor.clone() for tensor in tensors]
    before = weight_norm(tensors)
    facts = build(soft_clamp, rho=1.5, t_start=10, strength=0.5).after_step(10, tensors)
    held = 1.5 * 4.0
    torch.testing.assert_close(weight_norm(tensors), before + 0.5 * (held - before), rtol=1e-6, atol=0)
    scale = (weight_norm(tensors) / before).view(3, 1)  # every tensor of member m scaled by the same factor
    for tensor, start in zip(tensors, original):
        torch.testing.assert_close(tensor.flatten(1), start.flatten(1) * scale, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(facts["norm_before_clamp"], before)
    torch.testing.assert_close(facts["held_norm"], torch.full_like(before, held))
    assert build(soft_clamp, rho=1.5, t_start=10, strength=0.5).after_step(11, tensors) is None  # facts once


def test_soft_clamp_with_strength_one_is_the_builtin_clamp(soft_clamp):
    soft, hard = stacked_norm_tensors(), stacked_norm_tensors()
    build(soft_clamp, rho=1.5, t_start=10, strength=1.0).after_step(10, soft)
    build(build_registry(autoload=False).get("norm_controller", "clamp"), rho=1.5, t_start=10).after_step(10, hard)
    torch.testing.assert_close(weight_norm(soft), torch.full((3,), 1.5 * 4.0, dtype=torch.float64),
                               rtol=1e-6, atol=0)
    for soft_tensor, hard_tensor in zip(soft, hard):
        torch.testing.assert_close(soft_tensor, hard_tensor, rtol=1e-12, atol=0)


@pytest.mark.parametrize("options", [{"rho": 0.0}, {"t_start": 0}, {"strength": 0.0}, {"strength": 1.5}],
                         ids=lambda options: ",".join(f"{k}={v}" for k, v in options.items()))
def test_soft_clamp_refuses_options_outside_their_range(soft_clamp, options):
    with pytest.raises(ValueError, match=next(iter(options))):
        soft_clamp.config_class(**options)


# The example package installed the way a user installs it, then used from the command line.


def gnorm_command() -> list[str]:
    script = Path(sys.executable).parent / "gnorm"
    return [str(script)] if script.exists() else [sys.executable, "-m", "gnorm.cli"]


def run_gnorm(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != DISABLE_AUTOLOAD_ENV}
    env["OMP_NUM_THREADS"] = "1"  # a tiny model: more threads only contend for the CPU (10x slower on 2 cores)
    return subprocess.run([*gnorm_command(), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def setuptools_version() -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in importlib.metadata.version("setuptools").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return ()


@pytest.fixture(scope="module")
def softclamp_installed() -> None:
    """plugins/gnorm-plugin-softclamp pip-installed (editable) into this interpreter's environment, as a
    user would. It stays installed: its one controller conflicts with nothing."""
    if importlib.util.find_spec("pip") is None:
        pytest.skip("installing the example plugin needs pip in this environment")
    install = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--editable", str(SOFTCLAMP_DIR)]
    if setuptools_version() >= (77,):  # the plugin's build-system.requires: build offline with it
        install += ["--no-index", "--no-build-isolation"]
    installed = subprocess.run(install, capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stdout + installed.stderr


def test_the_installed_example_plugin_is_listed_with_its_package(softclamp_installed, tmp_path):
    listed = run_gnorm("plugins", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    listing = json.loads(listed.stdout)
    rows = [row for row in listing["components"] if row["name"] == "soft_clamp"]
    assert [(row["kind"], row["package"], row["version"]) for row in rows] == [
        ("norm_controller", SOFTCLAMP.package, SOFTCLAMP.version)]
    assert not [failure for failure in listing["failures"] if failure["package"] == SOFTCLAMP.package]


SOFT_CLAMP = {"name": "soft", "critical_norm": 20.0,
              "controller": {"name": "soft_clamp", "t_start": 50, "strength": 0.5}}


def soft_clamp_study(tmp_path: Path) -> Path:
    """Two seeds at p = 31, d = 8, H = 16, lr 3e-3, 300 steps: the free stage and a soft clamp to 20."""
    return write_study(tmp_path, filename="softclamp.toml", stages=[FREE, SOFT_CLAMP],
                       experiment={"name": "softclamp"}, task={"p": 31},
                       architecture={"embed_dim": 8, "hidden_dim": 16}, optimizer={"lr": 3e-3},
                       training={"max_steps": 300}, evaluation={"every": 50})


def test_gnorm_run_trains_a_stage_with_the_installed_soft_clamp(softclamp_installed, tmp_path):
    study = soft_clamp_study(tmp_path)
    ran = run_gnorm("run", str(study), "--out", str(tmp_path / "results"), cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr

    store = Store(tmp_path / "results")
    try:
        records = store.records()
        soft = [record for record in records if record.stage == "soft"]
        assert sorted(record.stage for record in records) == ["free", "free", "soft", "soft"]
        assert [record.config["controller"]["name"] for record in soft] == ["soft_clamp", "soft_clamp"]
        for record in soft:
            trajectory = dict(zip(*(store.trajectory(record.run_id)[key] for key in ("step", "weight_norm"))))
            before = record.facts["norm_before_clamp"]
            assert record.facts["held_norm"] == pytest.approx(20.0)
            # evaluated right after the first soft-clamp step (t_start = 50): halfway from before to 20
            assert trajectory[50] == pytest.approx(before + 0.5 * (20.0 - before), rel=1e-4)
            assert before < 15.0 and trajectory[300] == pytest.approx(20.0, abs=0.5)
    finally:
        store.close()
