"""The one error type users see: a file and what is wrong with it."""

from __future__ import annotations

from os import PathLike


class MedlossyError(Exception):
    """Bad input or a failed check, reported as one line: ``<file>: <problem>``."""

    def __init__(self, path: str | PathLike[str] | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        # One line whatever the cause says (library messages can span several).
        self.problem = " ".join(str(problem).split())
        super().__init__(self.problem if self.path is None
                         else f"{self.path}: {self.problem}")

    def __reduce__(self):
        # Pickled when raised in a worker process; the default (cls, args) cannot rebuild it
        # and breaks the whole process pool.
        return type(self), (self.path, self.problem)


class CheckFailed(MedlossyError):
    """A check that ran and found a mismatch (``verify``): exit status 1, not 2."""
