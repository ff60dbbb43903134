"""Shell completion of component names: click completes commands, options and paths itself (through
``_GNORM_COMPLETE``, see the README); these callbacks add the names only installed plugins know, for
the options and arguments that take one (``--analyzer``, ``--executor``, ``examples copy NAME``).

A completion never fails: where the plugins cannot be loaded it offers nothing rather than an error.
"""

from __future__ import annotations

from typing import Callable

import click
from click.shell_completion import CompletionItem


def matching(names: list[str], incomplete: str, descriptions: dict[str, str] | None = None) -> list[CompletionItem]:
    """The ``names`` that start with what has been typed, each with its one-line description (zsh and
    fish show it)."""
    descriptions = descriptions or {}
    return [CompletionItem(name, help=descriptions.get(name) or None) for name in names if name.startswith(incomplete)]


def component_names(kind: str) -> Callable[[click.Context, click.Parameter, str], list[CompletionItem]]:
    """A ``shell_complete`` callback offering the registered components of ``kind`` (analyzer, executor, ...)
    with their summaries."""

    def complete(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
        try:
            from gnorm.registry import default_registry

            registry = default_registry()
            summaries = {entry.component.name: entry.component.summary for entry in registry.entries()
                         if entry.component.kind == kind}
        except Exception:  # a broken plugin set: complete nothing, never print a traceback into the shell
            return []
        return matching(sorted(summaries), incomplete, summaries)

    return complete


def example_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """A ``shell_complete`` callback offering the shipped examples' names with their descriptions."""
    try:
        from gnorm.shipped_examples import list_examples

        examples = list_examples()
    except Exception:  # examples not installed: complete nothing
        return []
    return matching([example.name for example in examples], incomplete,
                    {example.name: example.description for example in examples})

