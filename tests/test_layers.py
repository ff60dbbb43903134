"""The layers of gnorm's import graph hold: the run model sits at the bottom, importing neither the
registry, the file loader, the strict converter (cattrs) nor torch, and it writes a configuration as
plain data exactly as the converter would (so run ids do not depend on which of them wrote it)."""

from __future__ import annotations

import enum
import json
import os
import subprocess
import sys
import tempfile
import typing
from pathlib import Path

import attrs
import pytest

from gnorm.converter import converter
from gnorm.loader import load_experiment
from gnorm.registry import build_registry
from gnorm.runmodel import plain_data

REPO = Path(__file__).resolve().parent.parent
BUILTINS = build_registry(autoload=False)
#: What the run model must never pull in, however it is imported.
ABOVE_THE_RUN_MODEL = ("gnorm.registry", "gnorm.loader", "gnorm.converter", "cattrs", "torch")


def modules_after_importing(module: str) -> set[str]:
    """The modules a fresh interpreter holds after ``import module``."""
    code = f"import json, sys; import {module}; print(json.dumps(sorted(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                            cwd=REPO).stdout
    return set(json.loads(output))


def test_the_run_model_imports_neither_the_registry_the_loader_the_converter_nor_torch():
    loaded = modules_after_importing("gnorm.runmodel")
    assert "gnorm.runmodel" in loaded
    assert sorted(loaded & set(ABOVE_THE_RUN_MODEL)) == []


class Colour(enum.Enum):
    RED = "red"


@attrs.frozen
class Inner:
    level: int = 1


@attrs.frozen
class EveryShape:
    numbers: tuple[int, ...] = (1, 2)
    loose: tuple = (3, (4, 5))
    chosen: frozenset[int] = frozenset({1, 2})
    tables: list[Inner] = attrs.field(factory=lambda: [Inner(), Inner(2)])
    by_name: dict[str, Inner] = attrs.field(factory=lambda: {"a": Inner(3)})
    colour: Colour = Colour.RED
    anything: typing.Any = (6, 7)
    maybe: Inner | None = None
    inner: Inner = Inner()
    _private: int = 4
    ratio: float = 1


def test_plain_data_is_what_the_converter_unstructures_for_every_shape_a_config_holds():
    value = EveryShape()
    assert plain_data(value) == converter.unstructure(value)
    assert json.dumps(plain_data(value), default=sorted) == json.dumps(converter.unstructure(value), default=sorted)


def _default_configs():
    for kind in ("task", "architecture", "norm_controller", "grok_criterion", "observable", "analyzer", "executor"):
        for name in BUILTINS.names(kind):
            try:
                yield f"{kind}:{name}", BUILTINS.get(kind, name).config_class()
            except TypeError:  # a required option: covered through the example files below
                continue


@pytest.mark.parametrize("label, config", list(_default_configs()), ids=lambda value: value if isinstance(value, str) else "")
def test_plain_data_matches_the_converter_on_every_builtin_config(label, config):
    assert plain_data(config) == converter.unstructure(config)


@pytest.mark.parametrize("example", sorted((REPO / "examples").glob("*.toml")), ids=lambda path: path.name)
def test_every_run_of_the_examples_keeps_the_configuration_the_converter_gave_it(example):
    for run in load_experiment(example, BUILTINS).runs:
        for section in ("task", "architecture", "controller", "criterion"):
            assert plain_data(getattr(run, section).config) == converter.unstructure(getattr(run, section).config)
        for section in ("optimizer", "training", "evaluation", "loss"):
            assert plain_data(getattr(run, section)) == converter.unstructure(getattr(run, section))


#: What the command line's quick answers (``gnorm --help``, ``gnorm plugins``) must not wait for.
HEAVY = ("torch", "matplotlib")


def modules_after_command(*args: str, plugin_paths: tuple[Path, ...] = ()) -> set[str]:
    """The modules a fresh interpreter holds after running ``gnorm ARGS`` (gnorm's own plugins only, so
    the answer does not depend on what else is installed beside it)."""
    code = ("import json, sys\nfrom gnorm.cli import main\n"
            "try:\n    main(sys.argv[2:], prog_name='gnorm')\nexcept SystemExit as exit:\n"
            "    assert not exit.code, exit.code\n"
            "open(sys.argv[1], 'w').write(json.dumps(sorted(sys.modules)))\n")
    with tempfile.TemporaryDirectory() as folder:
        listing = Path(folder) / "modules.json"
        env = {**os.environ, "GNORM_DISABLE_PLUGIN_AUTOLOAD": "1",
               "PYTHONPATH": os.pathsep.join([str(REPO), *map(str, plugin_paths), os.environ.get("PYTHONPATH", "")])}
        subprocess.run([sys.executable, "-c", code, str(listing), *args], capture_output=True, text=True, check=True,
                       env=env, cwd=folder)
        return set(json.loads(listing.read_text()))


@pytest.mark.parametrize("args", [("--help",), ("-h",), ("plugins", "--json"), ("plugins",), ("examples", "list"),
                                  ("run", "--help")], ids=" ".join)
def test_the_quick_commands_import_neither_torch_nor_matplotlib(args):
    loaded = modules_after_command(*args)
    assert "gnorm.cli" in loaded
    if args[0] in ("plugins", "run"):  # these build the registry: every built-in plugin module is imported
        assert "gnorm.builtins.tasks" in loaded and "gnorm.builtins.analyzers.delay_law" in loaded
    assert sorted(loaded & set(HEAVY)) == []


def test_listing_the_plugins_builds_every_builtin_component_without_torch():
    code = ("import json, sys\nfrom gnorm.registry import build_registry\n"
            "registry = build_registry(autoload=False)\n"
            "print(json.dumps([len(registry.entries()), [str(f) for f in registry.failures], sorted(sys.modules)]))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    count, failures, loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                                        check=True, env=env, cwd=REPO).stdout)
    assert failures == [] and count == len(BUILTINS.entries())
    assert sorted(set(loaded) & set(HEAVY)) == []


#: The plugin packages in this repository, by the module their entry point names.
REPOSITORY_PLUGINS = {"gnorm_plugin_softclamp": "gnorm-plugin-softclamp", "gnorm_plugin_gradclip": "gnorm-plugin-gradclip",
                      "gnorm_plugin_grokgap": "gnorm-plugin-grokgap", "gnorm_dask": "gnorm-dask",
                      "gnorm_bench.plugin": "gnorm-bench"}


@pytest.mark.parametrize("module", sorted(REPOSITORY_PLUGINS))
def test_the_repositorys_plugin_modules_import_without_torch(module):
    """The example plugins show the habit: torch is imported where tensors are made, not at the top."""
    folder = REPO / "plugins" / REPOSITORY_PLUGINS[module]
    code = f"import json, sys; import {module}; print(json.dumps(sorted(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
    if done.returncode and "ModuleNotFoundError" in done.stderr and module.split(".")[0] not in done.stderr:
        pytest.skip(f"{module} needs a package that is not installed here: {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0, done.stderr
    assert sorted(set(json.loads(done.stdout)) & set(HEAVY)) == []


def test_the_architectures_names_match_the_activation_functions():
    from gnorm.builtins.architectures import ACTIVATION_NAMES
    from gnorm.builtins.networks import ACTIVATIONS

    assert tuple(ACTIVATIONS) == ACTIVATION_NAMES
