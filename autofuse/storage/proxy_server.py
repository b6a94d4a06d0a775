"""The storage proxy's server side: Optuna's gRPC server over the study's database, and the
upkeep beside it (stale proxied trials retried, their records mirrored into ``autofuse_trials``).
The client side and the heartbeat that proxied workers send are in ``storage/proxy.py``."""

from __future__ import annotations

import contextlib
import copy
import logging
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import optuna
from optuna.trial import TrialState

from autofuse._util import first_line, json_text
from autofuse.errors import ConfigError
from autofuse.storage.history import HistoryStore, proxied_record
from autofuse.storage.proxy import DEFAULT_HEARTBEAT_S, DEFAULT_MAX_RETRY, HEARTBEAT_ATTR, UPKEEP_S

log = logging.getLogger(__name__)


def serve_proxy(
    storage: optuna.storages.BaseStorage,
    host: str = "127.0.0.1",
    port: int = 13000,
    threads: int = 16,
    history_url: str | None = None,
) -> None:
    """Serve ``storage`` (the study's RDB storage) to gRPC clients until interrupted (Ctrl-C or
    SIGTERM): Optuna's server, with its recommended in-process cache in front of the RDB storage,
    and :class:`Upkeep` beside it (stale proxied trials retried; their records mirrored into
    ``autofuse_trials`` at ``history_url``, once more on the way out)."""
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    cached = optuna.storages.get_storage(storage)
    pool = ThreadPoolExecutor(max_workers=threads)
    upkeep = Upkeep(cached, history_url)
    log.info("storage proxy on %s:%d", host, port)
    with _sigterm_interrupts():
        upkeep.start()
        try:
            optuna.storages.run_grpc_proxy_server(cached, host=host, port=port, thread_pool=pool)
        except RuntimeError as e:  # grpc: the port is taken or the address is not this host's
            raise ConfigError(f"storage-proxy: cannot listen on {host}:{port} ({e})") from None
        except KeyboardInterrupt:
            log.info("storage proxy stopped")
        finally:
            upkeep.close()


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (a job scheduler stopping the proxy) stops it like Ctrl-C, so the last records are
    mirrored before it exits."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


class Upkeep(threading.Thread):
    """The proxy's background pass every ``period`` seconds: fail and retry the stale trials of
    proxied workers, and mirror their records into ``autofuse_trials`` at ``history_url``."""

    def __init__(
        self,
        storage: optuna.storages.BaseStorage,
        history_url: str | None,
        period: float = UPKEEP_S,
    ) -> None:
        super().__init__(name="storage-proxy-upkeep", daemon=True)
        self.storage, self.history_url, self.period = storage, history_url, period
        self.stop = threading.Event()
        self._seen: dict[int, tuple[Any, float]] = {}  # trial id -> (stamp, monotonic time seen)
        self._mirrored: dict[tuple[str, int], str] = {}  # (study, number) -> record mirrored
        self._history: Any = None
        self._warned = False

    def run(self) -> None:
        while not self.stop.wait(self.period):
            self.step()

    def step(self, reap: bool = True) -> None:
        """One pass; a failing pass is logged and the next one tries again."""
        try:
            names = [s.study_name for s in self.storage.get_all_studies()]
        except Exception as e:
            log.warning("storage proxy upkeep: %s", first_line(e))
            return
        running: set[int] = set()
        for name in names:
            try:
                study = optuna.load_study(study_name=name, storage=self.storage)
                if reap:
                    self.reap(study)
                    running |= {
                        t._trial_id
                        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                    }
                self.mirror(study)
            except Exception as e:
                log.warning("storage proxy upkeep, study %s: %s", name, first_line(e))
        if reap:  # forget the trials that ended
            self._seen = {k: v for k, v in self._seen.items() if k in running}

    def reap(self, study: optuna.Study) -> list[int]:
        """Fail the RUNNING proxied trials of ``study`` whose heartbeat stopped; returns their
        numbers."""
        stored = study.user_attrs.get("search_options") or {}
        beat_s = stored.get("heartbeat_interval") or DEFAULT_HEARTBEAT_S
        grace = stored.get("grace_period") or 4 * beat_s
        max_retry = stored.get("max_retry", DEFAULT_MAX_RETRY)
        now, failed = time.monotonic(), []
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if HEARTBEAT_ATTR not in t.system_attrs:
                continue  # a direct worker's trial: Optuna's own heartbeat covers it
            stamp = t.system_attrs[HEARTBEAT_ATTR]
            last = self._seen.get(t._trial_id)
            if last is None or last[0] != stamp:
                self._seen[t._trial_id] = (stamp, now)
                continue
            if now - last[1] < grace:
                continue
            if not self._fail_and_retry(study, t._trial_id, max_retry):
                continue  # it ended meanwhile
            failed.append(t.number)
            log.warning(
                "study %s: trial %d missed heartbeats for %.0f s; failed and queued for retry",
                study.study_name,
                t.number,
                now - last[1],
            )
        return failed

    def _fail_and_retry(self, study: optuna.Study, trial_id: int, max_retry: int | None) -> bool:
        """Queue the retry of stale trial ``trial_id``, then fail it; False when it ended
        meanwhile (the queued retry is failed again, before any worker runs it twice).

        The retry is queued first so that a worker counting the study's trials never sees the
        stale one failed and its retry not yet there (it would start a fresh trial instead, and
        the retry would wait forever once the study reaches its target). Optuna's own
        ``fail_stale_trials`` does the two in the other order; it runs in a worker that counts
        afterwards, this runs in the proxy beside workers counting at any moment."""
        frozen = copy.deepcopy(self.storage.get_trial(trial_id))
        frozen.system_attrs.pop(HEARTBEAT_ATTR, None)  # the retry starts its own
        with warnings.catch_warnings():  # flagged experimental by Optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        before = {t._trial_id for t in study.get_trials(deepcopy=False)}
        retry(study, frozen)
        try:
            if self.storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                return True
        except optuna.exceptions.UpdateFinishedTrialError:
            pass
        for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            if t._trial_id not in before:  # the retry just queued: not needed
                with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                    self.storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        return False

    def mirror(self, study: optuna.Study) -> int:
        """Write the records of the proxied trials of ``study`` that changed since the last pass
        into ``autofuse_trials`` (a study without an autofuse row is left alone); returns how
        many were written."""
        if not self.history_url:
            return 0
        if self._history is None:
            probe = HistoryStore(self.history_url, check=False)
            try:
                if probe.current_revision() is None:
                    return 0  # no autofuse tables: no study of `autofuse search` to mirror into
            finally:
                probe.close()
            try:
                self._history = HistoryStore(self.history_url, create=False)
            except ConfigError as e:  # an older schema: `autofuse db upgrade` first
                if not self._warned:
                    log.warning("storage proxy: no trial records mirrored (%s)", e)
                    self._warned = True
                return 0
        name, n = study.study_name, 0
        if self._history.study(name) is None:
            return 0
        for t in study.get_trials(deepcopy=False):
            if HEARTBEAT_ATTR not in t.system_attrs or t.state == TrialState.WAITING:
                continue
            rec = proxied_record(t)
            key = json_text({**rec.to_dict(), "state": t.state.name})
            if self._mirrored.get((name, t.number)) == key:
                continue
            fields = {k: v for k, v in rec.__dict__.items() if k not in ("number", "history")}
            self._history.record_trial(name, t.number, **fields)
            for h in rec.history:
                self._history.log_epoch(
                    name, t.number, int(h["epoch"]), {k: v for k, v in h.items() if k != "epoch"}
                )
            self._mirrored[(name, t.number)] = key
            n += 1
        return n

    def close(self) -> None:
        """Stop the thread, then one last pass (records written since the previous one)."""
        self.stop.set()
        if self.is_alive():
            self.join()
        self.step(reap=False)
        if self._history is not None:
            self._history.close()
