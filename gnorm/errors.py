"""Errors that reach the user as one clear line each (exit status 2, no traceback)."""

from __future__ import annotations

import errno
import re

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


#: Numbers and quoted names: what varies between the lines of one problem repeated over sweep points or seeds.
_VARYING = re.compile(r"'[^']*'|\"[^\"]*\"|[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def _shape(problem: Problem) -> tuple[str, str, str]:
    """A problem with its numbers and quoted names blanked: lines of one shape are one problem repeated."""
    return problem.source, problem.key, _VARYING.sub("#", problem.message)


def collapse_repeats(problems: list[Problem]) -> list[Problem]:
    """One line per problem: identical problems become one, and problems at one key that differ only in
    numbers or quoted names (one problem met at many sweep points or seeds) become the first of them with
    ``(and N more like it)``. Order is that of first appearance."""
    groups: dict[tuple[str, str, str], list[Problem]] = {}
    for problem in problems:
        group = groups.setdefault(_shape(problem), [])
        if problem not in group:
            group.append(problem)
    return [group[0] if len(group) == 1 else
            attrs.evolve(group[0], message=f"{group[0].message} (and {len(group) - 1} more like it)")
            for group in groups.values()]


class UserError(Exception):
    """Bad input or a refused request. The CLI prints each line and exits with status 2. Repeats of one
    problem are collapsed into one line (:func:`collapse_repeats`)."""

    def __init__(self, problems: list[Problem] | str):
        if isinstance(problems, str):
            problems = [Problem(source="", key="", message=problems)]
        self.problems = collapse_repeats(list(problems))
        super().__init__("\n".join(str(p) for p in self.problems))


class PluginError(UserError):
    """A plugin set that cannot be used: two packages give one name, or a hook name is misspelled."""


def write_failure(source: str, path: object, error: OSError) -> UserError:
    """A failed write of ``path`` as one line: ``source`` (a command-line option, or "" to lead with the
    path), the path, and why in words (the disk is full, no such directory, read-only, ...)."""
    reasons = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
               errno.ENOENT: "its directory does not exist", errno.EACCES: "permission denied",
               errno.EPERM: "permission denied", errno.EROFS: "the file system is read-only",
               errno.EISDIR: "it is a directory", errno.ENOTDIR: "a part of the path is not a directory",
               errno.EEXIST: "it exists and is not a directory"}
    reason = reasons.get(error.errno, error.strerror or str(error))
    return UserError([Problem(source, str(path), f"cannot write here: {reason}") if source else
                      Problem(str(path), "", f"cannot write here: {reason}")])
