"""Plugins that misbehave: one that exits at import or whose registration hook returns something other
than components is reported and skipped, and every other command still works; a name two packages
give is refused naming both, with the way out."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import gnorm
from gnorm.cli import main
from gnorm.errors import PluginError
from gnorm.registry import DISABLE_AUTOLOAD_ENV, Provider, build_registry, default_registry
from test_plugins import EmptyConfig, halve_controller, plugin_module

PKG = Provider("pkg-a", "1.0")


@pytest.fixture
def autoload_on(monkeypatch):
    monkeypatch.delenv(DISABLE_AUTOLOAD_ENV, raising=False)


@pytest.fixture
def fresh_default_registry():
    default_registry.cache_clear()
    yield
    default_registry.cache_clear()


@pytest.fixture
def exiting_distribution(tmp_path, monkeypatch, autoload_on) -> Provider:
    """An installed distribution (a .dist-info on sys.path) whose gnorm entry point calls sys.exit()."""
    site = tmp_path / "site-packages"
    dist_info = site / "gnorm_plugin_exits-0.2.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: gnorm-plugin-exits\nVersion: 0.2\n")
    (dist_info / "entry_points.txt").write_text("[gnorm]\nexits = gnorm_plugin_exits\n")
    (site / "gnorm_plugin_exits.py").write_text("import sys\nsys.exit('no GPU here')\n")
    monkeypatch.syspath_prepend(str(site))
    return Provider("gnorm-plugin-exits", "0.2")


def test_a_plugin_that_exits_at_import_is_reported_and_skipped(exiting_distribution):
    registry = build_registry()
    [failure] = [f for f in registry.failures if f.provider == exiting_distribution]
    assert failure.error == "SystemExit: no GPU here"
    assert "modular_addition" in registry.names("task")


def test_gnorm_plugins_still_works_beside_a_plugin_that_exits(exiting_distribution, fresh_default_registry):
    result = CliRunner().invoke(main, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    assert any(f["package"] == "gnorm-plugin-exits" for f in json.loads(result.stdout)["failures"])
    assert "gnorm-plugin-exits 0.2 failed to load and was skipped" in result.stderr


NOT_COMPONENTS = {
    "None": None,
    "a string": "halve",
    "a dict": {"halve": "controller"},
    "a list with a wrong item": ["halve"],
    "a component of another kind": [gnorm.Task(name="xor", summary="", config_class=EmptyConfig, factory=object)],
}


@pytest.mark.parametrize("returned", NOT_COMPONENTS, ids=str)
def test_a_hook_returning_no_components_is_reported_and_its_whole_plugin_skipped(returned):
    plugin = plugin_module("pkg_a", gnorm_norm_controllers=lambda: NOT_COMPONENTS[returned],
                           gnorm_tasks=lambda: [gnorm.Task(name="xor", summary="", config_class=EmptyConfig,
                                                           factory=object)])
    registry = build_registry(extra_plugins=[(plugin, PKG)], autoload=False)
    [failure] = registry.failures
    assert failure.provider == PKG and failure.entry_point.endswith("gnorm_norm_controllers")
    assert "expected" in failure.error and "gnorm.NormController" in failure.error
    assert failure.error.endswith("the plugin is skipped")
    assert "xor" not in registry.names("task")  # the plugin's other components are left out too
    assert "clamp" in registry.names("norm_controller")  # gnorm's own still load


def test_two_packages_giving_one_name_are_named_with_the_way_out():
    first = plugin_module("pkg_a", gnorm_norm_controllers=lambda: [halve_controller()])
    second = plugin_module("pkg_b", gnorm_norm_controllers=lambda: [halve_controller()])
    with pytest.raises(PluginError) as refused:
        build_registry(extra_plugins=[(first, PKG), (second, Provider("pkg-b", "2.0"))], autoload=False)
    [problem] = refused.value.problems
    assert str(problem) == ("plugins: norm_controller 'halve': given by two packages: pkg-a 1.0 and pkg-b 2.0; "
                            f"uninstall one of them, or set {DISABLE_AUTOLOAD_ENV}=1 to load gnorm's own "
                            "plugins only")


def test_a_mistyped_hook_says_how_to_get_past_it():
    typo = plugin_module("pkg_a", gnorm_norm_controller=lambda: [halve_controller()])
    with pytest.raises(PluginError, match=f"pkg-a 1.0.*set {DISABLE_AUTOLOAD_ENV}=1"):
        build_registry(extra_plugins=[(typo, PKG)], autoload=False)
