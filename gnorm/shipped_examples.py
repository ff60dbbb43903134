"""The example experiments and notebooks that ship with gnorm: where they are, what each is, and copying
one out to edit (``gnorm examples list`` / ``gnorm examples copy``).

The files live once, in the repository's ``examples/`` folder; the wheel carries them as the data
package ``gnorm.examples`` (pyproject's ``package-dir`` maps it onto that folder), so an installed gnorm
finds them next to its own modules and a source tree or editable install finds the folder itself. An
example is named by its path below that folder without the suffix (``quickstart``,
``paper-a/dense_rho``, ``notebooks/tour``); its description is the first line of its header (a TOML
file's leading comment, a notebook's first Markdown cell).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import attrs

from gnorm.errors import Problem, UserError, write_failure

#: The kinds of file that are examples: experiment files and notebooks.
EXAMPLE_SUFFIXES = (".toml", ".ipynb")
#: Where the examples sit inside an installed gnorm package.
PACKAGED_FOLDER = "examples"


@attrs.frozen
class Example:
    """One shipped example: its name, its file, and the one-line description from its header."""

    name: str
    path: Path
    description: str


def examples_root() -> Path:
    """The folder holding the examples: ``gnorm/examples`` inside an installed package, else the
    ``examples/`` folder beside the ``gnorm`` package in a source tree (an editable install; the tree
    is known by its ``pyproject.toml``)."""
    package = Path(__file__).resolve().parent
    if (package / PACKAGED_FOLDER).is_dir():
        return package / PACKAGED_FOLDER
    if (package.parent / "examples").is_dir() and (package.parent / "pyproject.toml").is_file():
        return package.parent / "examples"
    raise UserError(f"gnorm's examples are not installed (looked in {package / PACKAGED_FOLDER} and "
                    f"{package.parent / 'examples'}); reinstall gnorm from its wheel or sdist")


def first_sentence(lines: list[str]) -> str:
    """The first sentence of the first paragraph of ``lines`` (a paragraph ends at a blank line or an
    indented line, such as a command shown under it), without a closing colon."""
    paragraph = []
    for line in lines:
        if not line.strip() or (paragraph and line.startswith("  ")):
            if paragraph:
                break
            continue
        paragraph.append(line.strip())
    text = " ".join(paragraph)
    return re.split(r"(?<=[.!?])\s+(?=[A-Z])", text, maxsplit=1)[0].rstrip(":").strip()


def toml_description(text: str) -> str:
    """The first sentence of a TOML file's leading comment block."""
    header = []
    for line in text.splitlines():
        if not line.strip().startswith("#"):
            break
        header.append(line.strip()[1:].removeprefix(" "))
    return first_sentence(header)


def notebook_description(text: str) -> str:
    """A notebook's first Markdown cell's heading, or else its first sentence."""
    try:
        cells = json.loads(text).get("cells", [])
    except (ValueError, AttributeError):
        return ""
    for cell in cells:
        if isinstance(cell, dict) and cell.get("cell_type") == "markdown":
            source = cell.get("source", "")
            lines = ("".join(source) if isinstance(source, list) else str(source)).strip().splitlines()
            if lines and lines[0].startswith("#"):  # a heading is the description
                return lines[0].lstrip("#").strip()
            return first_sentence(lines)
    return ""


def describe(path: Path) -> str:
    """An example file's one-line description (empty where its header has none)."""
    text = path.read_text(encoding="utf-8")
    return notebook_description(text) if path.suffix == ".ipynb" else toml_description(text)


def list_examples(root: Path | None = None) -> list[Example]:
    """Every example below ``root`` (default :func:`examples_root`), sorted by name. Hidden files and
    folders (checkpoints a notebook server leaves) are not examples."""
    root = root or examples_root()
    found = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if path.suffix not in EXAMPLE_SUFFIXES or not path.is_file():
            continue
        if any(part.startswith(".") for part in relative.parts):
            continue
        found.append(Example(relative.with_suffix("").as_posix(), path, describe(path)))
    return found


def find_example(name: str, examples: list[Example]) -> Example:
    """The example called ``name``: its name (``paper-a/dense_rho``), with or without its suffix, or its
    file name alone where only one example has it (``dense_rho``). Anything else is refused, listing
    the known names."""
    wanted = name.strip().replace(os.sep, "/")
    for suffix in EXAMPLE_SUFFIXES:
        wanted = wanted[: -len(suffix)] if wanted.endswith(suffix) else wanted
    exact = [example for example in examples if example.name == wanted]
    by_file = [example for example in examples if example.name.rsplit("/", 1)[-1] == wanted]
    if exact or len(by_file) == 1:
        return (exact or by_file)[0]
    known = ", ".join(example.name for example in examples) or "none"
    if by_file:
        raise UserError([Problem("examples copy", "NAME", f"{name!r} names {len(by_file)} examples; say which: "
                                 + ", ".join(example.name for example in by_file))])
    raise UserError([Problem("examples copy", "NAME", f"unknown example {name!r}; known: {known}")])


def copy_example(example: Example, directory: Path, overwrite: bool = False) -> Path:
    """Copy ``example`` into ``directory`` (made if missing) under its own file name; an existing file
    is replaced only when ``overwrite``. Returns the new file's path."""
    target = directory / example.path.name
    if target.exists() and not overwrite:
        raise UserError([Problem(str(target), "", "exists; pass --force to replace it")])
    try:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(example.path, target)
    except OSError as error:
        raise write_failure("", error.filename or target, error) from None
    return target
