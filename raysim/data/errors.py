"""One error type for unreadable data, so every reader tells the user the same three things:
which path failed, what was expected there, and how to obtain the data."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class DataError(Exception):
    """A dataset file or folder that is missing, truncated, corrupt or untrusted."""

    def __init__(self, path: Path | str, problem: str, *, expected: str, obtain: str):
        self.path = Path(path)
        self.problem = problem
        self.expected = expected
        self.obtain = obtain
        super().__init__(f"{self.path}: {problem}\n  expected: {expected}\n  to obtain it: {obtain}")

    def __reduce__(self):
        # Keyword-only fields would otherwise be lost when the error crosses a process boundary.
        return _rebuild, (self.path, self.problem, self.expected, self.obtain)


def _rebuild(path: Path, problem: str, expected: str, obtain: str) -> DataError:
    return DataError(path, problem, expected=expected, obtain=obtain)


@dataclass(frozen=True)
class DataFormat:
    """What a reader expects and where the data comes from; builds its DataErrors."""

    expected: str
    obtain: str

    def error(self, path: Path | str, problem: str) -> DataError:
        return DataError(path, problem, expected=self.expected, obtain=self.obtain)
