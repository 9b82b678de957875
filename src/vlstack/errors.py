"""Errors that tell the user what was wrong and how to fix it.

Every error vlstack raises on bad input is a `VlstackError`, so callers (and the
CLI) can catch one type and print the message instead of a deep torch traceback.
"""

from __future__ import annotations


class VlstackError(Exception):
    """Base class: the message must say what was wrong and how to fix it."""


class ConfigError(VlstackError):
    """A config key, value or recipe is invalid."""


class CheckpointError(VlstackError):
    """A checkpoint is missing, corrupt, or does not fit the architecture."""


class InputError(VlstackError):
    """A tensor or sample given to a model has the wrong shape, type or length."""


class DataError(VlstackError):
    """A data sample or file is malformed; the message names the field or file."""
