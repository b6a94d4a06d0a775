"""``autofuse dashboard``: a live view of a study while it runs, served by optuna-dashboard (the
well-kept Optuna web UI: history, intermediate values, parameter importances, trial table) straight
from the study's storage. It only reads what the workers write; it binds 127.0.0.1 unless told
otherwise, because it has no authentication."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from autofuse.errors import ConfigError
from autofuse.paths import Paths
from autofuse.storage import make_storage
from autofuse.storage.history import HistoryStore

log = logging.getLogger(__name__)


@dataclass
class Dashboard:
    """What ``serve`` will show: the storage and the study's page."""

    url: str
    study: str
    study_id: int
    host: str
    port: int

    @property
    def page(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/dashboard/studies/{self.study_id}"


def locate(
    study: str,
    *,
    storage: str | None = None,
    workdir: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8080,
) -> Dashboard:
    """The study's dashboard page; a study that is not in the storage is a ConfigError."""
    url = storage or Paths.resolve(workdir).default_storage
    if HistoryStore(url, create=False).study(study) is None:
        raise ConfigError(
            f"no study {study!r} in {sa.engine.make_url(url).render_as_string(hide_password=True)}"
        )
    study_id = make_storage(url).get_study_id_from_name(study)
    return Dashboard(url, study, study_id, host, port)


def serve(board: Dashboard, on_ready: Callable[[Dashboard], None] | None = None) -> None:
    """Serve optuna-dashboard on the study's storage until interrupted."""
    import optuna_dashboard  # lazy: only this command needs the web server

    if on_ready is not None:
        on_ready(board)
    try:
        optuna_dashboard.run_server(make_storage(board.url), host=board.host, port=board.port)
    except OSError as e:  # the port is taken, or the address is not this host's
        raise ConfigError(f"dashboard: cannot listen on {board.host}:{board.port}: {e}") from e
