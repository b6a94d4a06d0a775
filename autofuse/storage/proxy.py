"""Optuna's gRPC storage proxy: many workers, few database connections.

Every worker that opens the study's RDB storage holds its own connection pool, so at hundreds of
workers the database runs out of connections (a known limit of Optuna's RDB storage). Optuna's
proxy (``run_grpc_proxy_server`` / ``GrpcStorageProxy``) puts one process with one pool between
the workers and the database: ``autofuse storage-proxy --storage URL --port P`` runs it, and
workers use ``--storage grpc://HOST:P``. ``benchmarks/storage_proxy.py`` measures connections and
latency per trial, direct versus through the proxy.
"""

from __future__ import annotations

import logging
import warnings
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import optuna

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


def serve_proxy(
    storage: optuna.storages.BaseStorage,
    host: str = "127.0.0.1",
    port: int = 13000,
    threads: int = 16,
) -> None:
    """Serve ``storage`` (the study's RDB storage) to gRPC clients until interrupted: Optuna's
    server, with its recommended in-process cache in front of the RDB storage."""
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    cached = optuna.storages.get_storage(storage)
    pool = ThreadPoolExecutor(max_workers=threads)
    log.info("storage proxy on %s:%d", host, port)
    try:
        optuna.storages.run_grpc_proxy_server(cached, host=host, port=port, thread_pool=pool)
    except RuntimeError as e:  # grpc: the port is taken or the address is not this host's
        raise ConfigError(f"storage-proxy: cannot listen on {host}:{port} ({e})") from None
