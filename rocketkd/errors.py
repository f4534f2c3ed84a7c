"""Errors rocketkd raises on purpose: each names the file and line, config key, or step at fault.

The CLI turns any of these into one line on stderr and exit status 2, with no traceback.
"""

from __future__ import annotations

from pathlib import Path


class RocketKDError(Exception):
    """Base class: an error whose message is meant for the user as it stands."""


class DataFormatError(RocketKDError):
    """Malformed or inconsistent input data: the message names the file and, where known, the line."""

    def __init__(self, path: str | Path, message: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


class ConfigError(RocketKDError):
    """A config key that is unknown, of the wrong type, or inconsistent with another."""


class ModelLoadError(RocketKDError):
    """A model path that does not exist or does not hold a loadable model."""


class IndexError_(RocketKDError):
    """An index folder that is incomplete, truncated, or does not match the encoder or corpus."""


class TrainingError(RocketKDError):
    """Training stopped: non-finite loss or gradients, named with the step and the loss parts."""


class OutputError(RocketKDError):
    """An output path rocketkd will not write: someone else's folder or file, or one another run holds (locked)."""
