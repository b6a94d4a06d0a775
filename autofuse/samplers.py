"""Optuna samplers and pruners by name (the names ``--sampler`` / ``--pruner`` accept).

Each factory reads its settings from the search space's ``sampler:`` / ``pruner:`` section;
the CLI's choices come from :data:`SAMPLERS` and :data:`PRUNERS`, so a new entry here is a new
option there.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import optuna

from autofuse.errors import ConfigError
from autofuse.space import PrunerConfig, SamplerConfig, SearchSpace


def _tpe(cfg: SamplerConfig, seed: int) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():  # multivariate/group are flagged experimental by Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed,
            multivariate=cfg.multivariate,
            group=cfg.group,
            n_startup_trials=cfg.n_startup_trials,
            constant_liar=True,
        )


def _random(cfg: SamplerConfig, seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed)


def _gp(cfg: SamplerConfig, seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=cfg.n_startup_trials)


def _qmc(cfg: SamplerConfig, seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.QMCSampler(seed=seed)


def _median(cfg: PrunerConfig) -> optuna.pruners.BasePruner:
    return optuna.pruners.MedianPruner(
        n_startup_trials=cfg.n_startup_trials, n_warmup_steps=cfg.n_warmup_steps
    )


def _hyperband(cfg: PrunerConfig) -> optuna.pruners.BasePruner:
    return optuna.pruners.HyperbandPruner(min_resource=1)


def _successive_halving(cfg: PrunerConfig) -> optuna.pruners.BasePruner:
    return optuna.pruners.SuccessiveHalvingPruner()


def _none(cfg: PrunerConfig) -> optuna.pruners.BasePruner:
    return optuna.pruners.NopPruner()


SAMPLERS: dict[str, Callable[[SamplerConfig, int], optuna.samplers.BaseSampler]] = {
    "tpe": _tpe,
    "random": _random,
    "gp": _gp,
    "qmc": _qmc,
}
PRUNERS: dict[str, Callable[[PrunerConfig], optuna.pruners.BasePruner]] = {
    "median": _median,
    "hyperband": _hyperband,
    "successive_halving": _successive_halving,
    "none": _none,
}


def make_sampler(space: SearchSpace, name: str | None, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler ``name`` (default: the space's) seeded with ``seed``."""
    name = name or space.sampler.name
    if name not in SAMPLERS:
        raise ConfigError(f"--sampler {name!r}: choose {', '.join(SAMPLERS)}")
    return SAMPLERS[name](space.sampler, seed)


def make_pruner(space: SearchSpace, name: str | None = None) -> optuna.pruners.BasePruner:
    """The pruner ``name`` (default: the space's)."""
    name = name or space.pruner.name
    if name not in PRUNERS:
        raise ConfigError(f"--pruner {name!r}: choose {', '.join(PRUNERS)}")
    return PRUNERS[name](space.pruner)


__all__ = ["PRUNERS", "SAMPLERS", "make_pruner", "make_sampler"]
