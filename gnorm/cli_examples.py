"""``gnorm examples list`` and ``gnorm examples copy NAME [DIR]``: the example experiments and notebooks
shipped with gnorm (:mod:`gnorm.shipped_examples`), listed with their descriptions and copied out to
edit and run. Bad input (an unknown name, a file that exists) is one line and exit status 2, through
the ``gnorm`` group."""

from __future__ import annotations

import json
from pathlib import Path

import click

from gnorm.completion import example_names


@click.group()
def examples() -> None:
    """List the example experiments and notebooks shipped with gnorm, or copy one out to edit."""


@examples.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (name, file, description).")
def list_command(as_json: bool) -> None:
    """Every shipped example: its name (what copy takes) and what it is."""
    from gnorm.shipped_examples import list_examples

    found = list_examples()
    if as_json:
        click.echo(json.dumps([{"name": e.name, "file": str(e.path), "description": e.description} for e in found],
                              indent=2))
        return
    width = max((len(e.name) for e in found), default=0)
    for example in found:
        click.echo(f"{example.name.ljust(width)}  {example.description}".rstrip())
    click.echo(f"\n{len(found)} examples; gnorm examples copy NAME [DIR] copies one out to edit", err=True)


@examples.command()
@click.argument("name", shell_complete=example_names)
@click.argument("directory", required=False, default=".", type=click.Path())
@click.option("--force", is_flag=True, help="Replace a file of that name already in DIRECTORY.")
def copy(name: str, directory: str, force: bool) -> None:
    """Copy the example NAME (see gnorm examples list) into DIRECTORY (default: here), under its own
    file name; an existing file is kept unless --force."""
    from gnorm.shipped_examples import copy_example, find_example, list_examples

    target = copy_example(find_example(name, list_examples()), Path(directory), overwrite=force)
    click.echo(f"wrote {target}")
