"""User-facing errors: the CLI prints their message on one line and exits non-zero."""

from __future__ import annotations


class AutofuseError(Exception):
    """Base class for errors caused by user input (bad dataset, option, space, ...)."""

    exit_code = 2


class ConfigError(AutofuseError):
    """A bad option, search-space key or spec."""
