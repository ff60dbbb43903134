"""What gnorm ships and how its command line is used by hand: the examples (``gnorm examples list`` /
``copy``), the package list in pyproject, ``-h``, shell completion of component and example names, and
(slow) the wheel and sdist built from this tree, installed into a fresh virtual environment."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest
from click.shell_completion import ShellComplete
from click.testing import CliRunner

from gnorm.cli import main
from gnorm.errors import UserError
from gnorm.registry import DISABLE_AUTOLOAD_ENV, default_registry
from gnorm.shipped_examples import (copy_example, examples_root, find_example, list_examples, notebook_description,
                                    toml_description)

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


@pytest.fixture(autouse=True)
def gnorms_own_plugins(monkeypatch):
    """gnorm's own plugins only: the names offered must not depend on what else is installed here."""
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    default_registry.cache_clear()
    yield
    default_registry.cache_clear()


# --- the examples -------------------------------------------------------------------------------------


def test_every_example_file_in_the_repository_is_listed_once_with_a_description():
    listed = list_examples(EXAMPLES)
    files = sorted(p for suffix in ("*.toml", "*.ipynb") for p in EXAMPLES.rglob(suffix)
                   if not any(part.startswith(".") for part in p.relative_to(EXAMPLES).parts))
    assert sorted(example.path for example in listed) == files
    assert len({example.name for example in listed}) == len(listed)
    assert [example.name for example in listed if not example.description] == []
    assert "quickstart" in {example.name for example in listed}
    assert "paper-a/dense_rho" in {example.name for example in listed}


def test_a_source_tree_finds_the_repositorys_examples_folder():
    assert examples_root() == EXAMPLES


def test_an_installed_package_finds_its_own_examples_and_a_broken_install_says_so(tmp_path, monkeypatch):
    import gnorm.shipped_examples as shipped

    site = tmp_path / "site-packages"
    (site / "gnorm").mkdir(parents=True)
    (site / "examples").mkdir()  # some other distribution's folder beside gnorm: not gnorm's examples
    monkeypatch.setattr(shipped, "__file__", str(site / "gnorm" / "shipped_examples.py"))
    with pytest.raises(UserError, match="gnorm's examples are not installed"):
        examples_root()
    (site / "gnorm" / "examples").mkdir()
    assert examples_root() == site / "gnorm" / "examples"


def test_a_description_is_the_first_sentence_of_the_header():
    text = ("# Paper B, Figure 6: same-state forks. Every arm starts from the identical state\n"
            "# its seed reaches.\n#\n# More.\n[experiment]\n")
    assert toml_description(text) == "Paper B, Figure 6: same-state forks."
    assert toml_description("# Four cells of equal work, for timing executors:\n#   gnorm run four.toml\n") == \
        "Four cells of equal work, for timing executors"
    assert toml_description("[experiment]\n# not a header\n") == ""
    notebook = {"cells": [{"cell_type": "code", "source": ["import gnorm"]},
                          {"cell_type": "markdown", "source": ["# A tour of gnorm\n", "\n", "Run a study."]}]}
    assert notebook_description(json.dumps(notebook)) == "A tour of gnorm"
    plain = {"cells": [{"cell_type": "markdown", "source": "Run a small study. Then load it."}]}
    assert notebook_description(json.dumps(plain)) == "Run a small study."
    assert notebook_description("not json") == ""


def test_notebooks_are_examples_too(tmp_path):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "tour.ipynb").write_text(json.dumps(
        {"cells": [{"cell_type": "markdown", "source": "## Tour: run, load, plot\nWhat it shows."}]}))
    (tmp_path / "notebooks" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "notebooks" / ".ipynb_checkpoints" / "tour-checkpoint.ipynb").write_text("{}")
    (tmp_path / "study.toml").write_text("# A study.\n")
    (tmp_path / "notes.txt").write_text("not an example")
    assert [(e.name, e.description) for e in list_examples(tmp_path)] == [
        ("notebooks/tour", "Tour: run, load, plot"), ("study", "A study.")]


def test_an_example_is_found_by_name_with_or_without_suffix_or_by_its_file_name_alone():
    examples = list_examples(EXAMPLES)
    for name in ("paper-a/dense_rho", "paper-a/dense_rho.toml", "dense_rho", "dense_rho.toml"):
        assert find_example(name, examples).name == "paper-a/dense_rho"


def test_an_unknown_example_is_one_line_listing_the_known_ones(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for folder in ("a", "b"):
        (tmp_path / folder / "same.toml").write_text("# Same name.\n")
    examples = list_examples(tmp_path)
    with pytest.raises(UserError) as unknown:
        find_example("nope", examples)
    assert [str(p) for p in unknown.value.problems] == [
        "examples copy: NAME: unknown example 'nope'; known: a/same, b/same"]
    with pytest.raises(UserError) as ambiguous:
        find_example("same", examples)
    assert "a/same, b/same" in str(ambiguous.value) and "say which" in str(ambiguous.value)


def test_copying_keeps_an_existing_file_unless_told(tmp_path):
    example = find_example("quickstart", list_examples(EXAMPLES))
    target = copy_example(example, tmp_path / "new" / "folder")
    assert target == tmp_path / "new" / "folder" / "quickstart.toml"
    assert target.read_bytes() == (EXAMPLES / "quickstart.toml").read_bytes()
    target.write_text("my edits")
    with pytest.raises(UserError) as refused:
        copy_example(example, target.parent)
    assert str(refused.value) == f"{target}: exists; pass --force to replace it"
    assert target.read_text() == "my edits"
    copy_example(example, target.parent, overwrite=True)
    assert target.read_bytes() == (EXAMPLES / "quickstart.toml").read_bytes()


def test_a_copy_into_a_file_that_is_not_a_folder_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("")
    result = CliRunner().invoke(main, ["examples", "copy", "quickstart", str(tmp_path / "afile")])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "cannot write here" in result.stderr


def test_the_examples_commands(tmp_path):
    runner = CliRunner()
    listed = runner.invoke(main, ["examples", "list"])
    assert listed.exit_code == 0, listed.output
    assert any(line.split()[0] == "quickstart" and "delay law" in line for line in listed.stdout.splitlines())
    as_json = json.loads(runner.invoke(main, ["examples", "list", "--json"]).stdout)
    assert {row["name"] for row in as_json} == {e.name for e in list_examples(EXAMPLES)}
    copied = runner.invoke(main, ["examples", "copy", "paper-b/dose_law", str(tmp_path)])
    assert copied.exit_code == 0 and (tmp_path / "dose_law.toml").is_file()
    again = runner.invoke(main, ["examples", "copy", "paper-b/dose_law", str(tmp_path)])
    assert again.exit_code == 2 and again.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'dose_law.toml'}: exists; pass --force to replace it"]
    assert runner.invoke(main, ["examples", "copy", "--force", "paper-b/dose_law", str(tmp_path)]).exit_code == 0
    unknown = runner.invoke(main, ["examples", "copy", "dose"])
    assert unknown.exit_code == 2 and len(unknown.stderr.strip().splitlines()) == 1
    assert "unknown example 'dose'" in unknown.stderr and "paper-b/dose_law" in unknown.stderr


def test_a_copied_example_is_a_valid_experiment_file(tmp_path):
    runner = CliRunner()
    assert runner.invoke(main, ["examples", "copy", "quickstart", str(tmp_path)]).exit_code == 0
    checked = runner.invoke(main, ["validate", str(tmp_path / "quickstart.toml")])
    assert checked.exit_code == 0, checked.output
    assert "ok" in checked.stdout


# --- what the wheel holds -----------------------------------------------------------------------------


def test_pyproject_lists_every_package_and_every_example_folder_named_like_one():
    """The package list is explicit (the examples are mapped in from outside gnorm/): a new subpackage,
    or an example folder Python would take for a package, must be added to it."""
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    packages = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "gnorm").rglob("__init__.py")}
    assert sorted(packages - listed) == [], "add these to [tool.setuptools] packages in pyproject.toml"
    folders = {"gnorm.examples." + ".".join(p.relative_to(EXAMPLES).parts) for p in EXAMPLES.rglob("*")
               if p.is_dir() and all(part.isidentifier() for part in p.relative_to(EXAMPLES).parts)}
    assert sorted(folders - listed) == [], "add these to [tool.setuptools] packages (and package-data) in pyproject"
    data = PYPROJECT["tool"]["setuptools"]["package-data"]
    assert sorted(folder for folder in folders if "*.ipynb" not in data.get(folder, ())) == []
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {"gnorm.examples": "examples"}
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]
    assert "Copyright (c) 2026 the gnorm authors" in (REPO / "LICENSE").read_text()


# --- -h and shell completion --------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["run"], ["analyze"], ["examples"], ["examples", "copy"], ["plugins"]],
                         ids=lambda words: " ".join(words) or "gnorm")
def test_dash_h_is_help_everywhere(command):
    short = CliRunner().invoke(main, [*command, "-h"])
    long = CliRunner().invoke(main, [*command, "--help"])
    assert short.exit_code == 0 and short.stdout == long.stdout and "Usage:" in short.stdout


def completions(words: list[str], incomplete: str) -> list[str]:
    """What ``gnorm WORDS INCOMPLETE<TAB>`` offers, through click's completion API."""
    return [item.value for item in ShellComplete(main, {}, "gnorm", "_GNORM_COMPLETE").get_completions(words, incomplete)]


def test_completion_offers_the_installed_analyzers_and_executors(tmp_path):
    assert "delay_law" in completions(["analyze", str(tmp_path), "--analyzer"], "")
    offered = completions(["analyze", str(tmp_path), "--analyzer"], "crit")
    assert offered == ["critical_norm"]
    assert {"serial", "local"} <= set(completions(["run", "file.toml", "--executor"], ""))
    assert completions(["run", "file.toml", "--executor"], "ser") == ["serial"]


def test_completion_offers_the_example_names():
    assert completions(["examples", "copy"], "paper-a/d") == ["paper-a/dense_rho"]
    assert "quickstart" in completions(["examples", "copy"], "")
    assert set(completions(["examples"], "")) == {"copy", "list"}


def test_the_shell_completion_protocol_answers_in_a_subprocess(tmp_path):
    """What bash does on TAB, with the script ``eval "$(_GNORM_COMPLETE=bash_source gnorm)"`` installs."""
    code = "import sys\nfrom gnorm.cli import main\nmain(prog_name='gnorm')\n"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "_GNORM_COMPLETE": "bash_complete", "COMP_WORDS": "gnorm analyze runs --analyzer del", "COMP_CWORD": "4"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "plain,delay_law" in done.stdout.splitlines()
    env["_GNORM_COMPLETE"] = "bash_source"
    script = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert "_gnorm_completion" in script.stdout and "complete " in script.stdout


# --- the built wheel and sdist, installed (slow) ------------------------------------------------------


def copy_of_the_tree(target: Path) -> Path:
    """The source tree as a clone would have it (no virtual environment, build output or caches)."""
    ignored = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                     "runs")
    shutil.copytree(REPO, target, ignore=ignored)
    return target


def build(hook: str, source: Path, out: Path) -> Path:
    """Run setuptools' PEP 517 hook ``hook`` (build_sdist, build_wheel) in ``source``; the built file."""
    code = f"from setuptools import build_meta; print(build_meta.{hook}({str(out)!r}))"
    done = subprocess.run([sys.executable, "-c", code], cwd=source, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    built = out / done.stdout.strip().splitlines()[-1]
    assert "Package would be ignored" not in done.stderr, done.stderr[-3000:]
    return built


@pytest.mark.slow
def test_the_wheel_built_from_the_sdist_installs_and_ships_the_examples_and_the_licence(tmp_path):
    tree = copy_of_the_tree(tmp_path / "tree")
    (tree / "examples" / "notebooks").mkdir(exist_ok=True)  # a notebook ships as an example too
    (tree / "examples" / "notebooks" / "packaging_check.ipynb").write_text(json.dumps(
        {"cells": [{"cell_type": "markdown", "source": ["# A notebook the wheel must carry"]}], "metadata": {},
         "nbformat": 4, "nbformat_minor": 5}))
    sdist = build("build_sdist", tree, tmp_path / "dist")
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
        archive.extractall(tmp_path / "unpacked", filter="data")
    top = sdist.name.removesuffix(".tar.gz")
    assert f"{top}/LICENSE" in names and f"{top}/examples/quickstart.toml" in names
    assert not [name for name in names if name.startswith((f"{top}/tests", f"{top}/plugins", f"{top}/benchmarks"))]

    wheel = build("build_wheel", tmp_path / "unpacked" / top, tmp_path / "wheels")
    with zipfile.ZipFile(wheel) as archive:
        in_wheel = set(archive.namelist())
    dist_info = f"{top}.dist-info"
    assert f"{dist_info}/licenses/LICENSE" in in_wheel
    shipped = {name.removeprefix("gnorm/examples/") for name in in_wheel if name.startswith("gnorm/examples/")}
    expected = {p.relative_to(tree / "examples").as_posix() for p in (tree / "examples").rglob("*")
                if p.suffix in (".toml", ".ipynb")}
    assert shipped == expected
    source_modules = {p.relative_to(tree).as_posix() for p in (tree / "gnorm").rglob("*.py")}
    assert sorted(source_modules - in_wheel) == []

    # A fresh environment that sees this one's dependencies (torch, click, ...) through a .pth line, and
    # holds gnorm only from the wheel.
    environment = tmp_path / "env"
    venv.create(environment, with_pip=False)
    python = environment / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    dependencies = next(p for p in sys.path if p.endswith("site-packages") and Path(p, "torch").is_dir())
    Path(site, "dependencies.pth").write_text(dependencies + "\n")
    clean = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                                "--no-index", "--quiet", str(wheel)], capture_output=True, text=True, env=clean,
                               timeout=600)  # pip runs for the fresh environment: its script runs its python
    assert installed.returncode == 0, installed.stderr
    gnorm = environment / "bin" / "gnorm"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    where = subprocess.run([str(python), "-c", "import gnorm; print(gnorm.__file__)"], capture_output=True,
                           text=True, env=clean, cwd=elsewhere, check=True).stdout
    assert where.startswith(str(environment)), where
    listed = subprocess.run([str(gnorm), "examples", "list"], capture_output=True, text=True, env=clean, cwd=elsewhere)
    assert listed.returncode == 0, listed.stderr
    names = [line.split()[0] for line in listed.stdout.splitlines() if line.strip()]
    assert {"quickstart", "paper-a/dense_rho", "notebooks/packaging_check"} <= set(names)
    copied = subprocess.run([str(gnorm), "examples", "copy", "quickstart"], capture_output=True, text=True, env=clean,
                            cwd=elsewhere)
    assert copied.returncode == 0, copied.stderr
    assert (elsewhere / "quickstart.toml").read_bytes() == (REPO / "examples" / "quickstart.toml").read_bytes()
    checked = subprocess.run([str(gnorm), "validate", "quickstart.toml"], capture_output=True, text=True, env=clean,
                             cwd=elsewhere)
    assert checked.returncode == 0, checked.stderr
