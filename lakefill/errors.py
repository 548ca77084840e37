"""Errors raised by lakefill. Each names what was received, what was expected and how to fix it."""

from __future__ import annotations

__all__ = ["LakefillError", "InputError", "SchemaError", "ConfigError", "ModelError", "ValidationFailed", "NothingNew"]


class LakefillError(Exception):
    """Base class of every error lakefill raises on purpose."""


class InputError(LakefillError):
    """The input file cannot be read as a table (missing, empty, duplicate columns...)."""


class SchemaError(LakefillError):
    """A schema file is invalid or does not match the data."""


class ConfigError(LakefillError):
    """A job configuration is invalid."""


class ModelError(LakefillError):
    """A model artifact is invalid, tampered with or trained on another schema."""


class ValidationFailed(LakefillError):
    """A table-level expectation failed: the whole run is refused."""


class NothingNew(LakefillError):
    """An incremental run found no new input file: nothing to do (not a failure)."""
