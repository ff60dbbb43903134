"""Errors that reach the user as one clear line each (exit status 2, no traceback)."""

from __future__ import annotations

import errno

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
