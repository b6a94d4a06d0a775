"""User-facing errors: the CLI prints their message on one line and exits non-zero."""

from __future__ import annotations


class AutofuseError(Exception):
    """Base class for errors caused by user input (bad dataset, option, space, ...)."""

    exit_code = 2


class ConfigError(AutofuseError):
    """A bad option, search-space key or spec."""


class MissingFiles(ConfigError):
    """Files of a study that another process wrote (stage-1 encoders, checkpoints, finalists)
    are neither in this process's work folder nor in the study's artifact store."""


class DamagedFileError(ConfigError):
    """A file autofuse wrote earlier (a checkpoint, an export, a database) cannot be read: it is
    truncated, overwritten, or not the kind of file it should be. The message names the file."""

    def __init__(self, path: object, problem: str, hint: str = "") -> None:
        self.path, self.problem, self.hint = str(path), problem, hint
        super().__init__(f"{path}: {problem}" + (f"; {hint}" if hint else ""))

    def __reduce__(self):  # picklable (worker processes send errors back)
        return type(self), (self.path, self.problem, self.hint)


class FeatureCostError(Exception):
    """A frozen encoder's one-off feature extraction would run past its deadline: projected from
    the rows done so far, before the rest is computed (the trial turns it into a timeout)."""

    def __init__(self, what: str, projected_s: float, left_s: float, rows: int) -> None:
        self.projected_s, self.left_s = projected_s, left_s
        super().__init__(
            f"feature extraction of {what} would take about {projected_s:.0f} s for {rows} rows "
            f"(measured on the first rows); {max(left_s, 0):.0f} s are left: skipped"
        )
