"""Errors that reach the user as one clear line each (exit status 2, no traceback)."""

from __future__ import annotations

import attrs


@attrs.frozen
class Problem:
    """One thing wrong with an input: where (file and dotted key) and what."""

    source: str
    key: str
    message: str

    def __str__(self) -> str:
        where = ": ".join(part for part in (self.source, self.key) if part)
        return f"{where}: {self.message}" if where else self.message


class UserError(Exception):
    """Bad input or a refused request. The CLI prints each line and exits with status 2."""

    def __init__(self, problems: list[Problem] | str):
        if isinstance(problems, str):
            problems = [Problem(source="", key="", message=problems)]
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class PluginError(UserError):
    """A plugin set that cannot be used: two packages give one name, or a hook name is misspelled."""
