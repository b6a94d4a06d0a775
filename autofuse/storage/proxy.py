"""Optuna's gRPC storage proxy: many workers, few database connections.

Every worker that opens the study's RDB storage holds its own connection pool, so at hundreds of
workers the database runs out of connections (a known limit of Optuna's RDB storage). Optuna's
proxy (``run_grpc_proxy_server`` / ``GrpcStorageProxy``) puts one process with one pool between
the workers and the database: ``autofuse storage-proxy --storage URL --port P`` runs it, and
workers use ``--storage grpc://HOST:P``. ``benchmarks/storage_proxy.py`` measures connections and
latency per trial, direct versus through the proxy.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import warnings
from collections.abc import Iterator
from urllib.parse import urlsplit

import optuna

from autofuse._util import first_line
from autofuse.errors import ConfigError

log = logging.getLogger(__name__)

SCHEME = "grpc"
#: a proxy that does not answer within this many seconds is reported as unreachable
CONNECT_TIMEOUT_S = 10.0


def is_grpc(url: str) -> bool:
    return url.split(":", 1)[0].lower() == SCHEME


def grpc_address(url: str) -> tuple[str, int]:
    """``grpc://HOST:PORT`` -> ``(HOST, PORT)``; anything else is a ConfigError."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if (
        parts.scheme.lower() != SCHEME
        or not parts.hostname
        or port is None
        or parts.path.strip("/")
    ):
        raise ConfigError(f"--storage {url!r}: a proxy address is grpc://HOST:PORT")
    return parts.hostname, port


def open_proxy(url: str, timeout: float = CONNECT_TIMEOUT_S) -> optuna.storages.BaseStorage:
    """A ``GrpcStorageProxy`` client for ``grpc://HOST:PORT``, once the server answers."""
    host, port = grpc_address(url)
    with warnings.catch_warnings():  # Optuna flags the proxy experimental (since 4.2)
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.GrpcStorageProxy(host=host, port=port)
    try:
        storage.wait_server_ready(timeout=timeout)
    except Exception as e:  # grpc.FutureTimeoutError and friends: one line for the user
        storage.close()
        raise ConfigError(
            f"--storage {url}: no storage proxy answers there within {timeout:.0f} s "
            f"(start one with `autofuse storage-proxy --storage URL --port {port}`)"
        ) from e
    return storage


# ---- heartbeats and history across the proxy -----------------------------------------------------
#
# Optuna's ``GrpcStorageProxy`` is not a ``BaseHeartbeat``: its workers send no heartbeat and
# ``fail_stale_trials`` does nothing through it, so the trial of a killed worker would stay RUNNING
# for ever. Hence, hand-written because the proxy carries no heartbeat: a proxied worker stamps
# its running trial with the system attribute ``autofuse:heartbeat`` (:func:`beating`), and the
# proxy process, which holds the real database storage, fails a trial whose stamp stopped changing
# for the study's grace period and queues its retry with Optuna's own
# ``RetryHeartbeatStaleTrialCallback`` (what ``fail_stale_trials`` does for a direct worker).
# Staleness is measured on the proxy's clock (when it last saw the stamp change), so the workers'
# clocks do not matter.
#
# Proxied workers have no SQL connection for ``autofuse_trials`` either: they keep the record in
# the trial's user attributes (``HistoryStore``'s fields, see :class:`~autofuse.storage.history.
# ProxyHistory`), and the proxy mirrors them into ``autofuse_trials`` (:class:`Upkeep`).

#: the system attribute a proxied worker refreshes while its trial runs; it also marks the trials
#: whose record the proxy mirrors into ``autofuse_trials``
HEARTBEAT_ATTR = "autofuse:heartbeat"
#: seconds between two passes of the proxy's reaper and history mirror
UPKEEP_S = 5.0
#: defaults of ``SearchOptions`` (``heartbeat_interval``, ``max_retry``) for a study without them
DEFAULT_HEARTBEAT_S, DEFAULT_MAX_RETRY = 30, 2


@contextlib.contextmanager
def beating(storage: optuna.storages.BaseStorage, trial_id: int, interval: float) -> Iterator[None]:
    """Stamp trial ``trial_id`` with :data:`HEARTBEAT_ATTR` now and every ``interval`` seconds
    while the block runs (a thread of this process)."""
    stop = threading.Event()

    def beat() -> bool:
        try:
            storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
        except optuna.exceptions.UpdateFinishedTrialError:
            return False  # the reaper failed it (this worker was silent too long)
        except Exception as e:  # the proxy restarts: the next beat may get through
            log.warning("heartbeat of trial id %d not sent (%s)", trial_id, first_line(e))
        return True

    def loop() -> None:
        while not stop.wait(interval) and beat():
            pass

    beat()
    thread = threading.Thread(target=loop, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
