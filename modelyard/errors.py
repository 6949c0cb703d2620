"""Errors that name the thing and the fix."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a declaration: where it is and what to do."""

    file: str
    pointer: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.pointer or '/'}: {self.message}"


class ModelyardError(Exception):
    """Base class of the errors modelyard reports to its users."""


class InvalidModelFolder(ModelyardError):
    """A model folder that cannot be served, with every problem found in it."""

    def __init__(self, folder: str, problems: list[Problem]):
        self.folder = folder
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class QualityError(ModelyardError):
    """Quality metrics cannot be computed as asked; the message says what to change."""


class ModelCodeFailed(ModelyardError):
    """A model's own code raised on a request it had accepted; the message names the
    step and the exception, which is its cause.

    Not an ``MLServerError`` on purpose: the server answers it as every unexpected
    error, a 500 whose body names the request id and never the exception's text (the
    log has the traceback under that id); a batch run reports it per row."""
