"""StudyLock on every backend: it excludes a second holder of the same study (and only that
study), and a lock connection dropped by the server is re-opened on the next acquire."""

from __future__ import annotations

import threading

import sqlalchemy as sa

from autofuse.storage.lock import StudyLock


def _kill_connection(url: str, lock: StudyLock) -> None:
    """Drop ``lock``'s server connection from another session, as a server restart would."""
    conn = lock._connection()
    postgres = url.startswith("postgresql")
    own_id = conn.execute(
        sa.text("SELECT pg_backend_pid()" if postgres else "SELECT CONNECTION_ID()")
    ).scalar()
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        if postgres:
            c.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": own_id})
        else:
            c.execute(sa.text(f"KILL {int(own_id)}"))
    admin.dispose()


def test_lock_excludes_and_survives_a_dropped_connection(url):
    a, b, other = StudyLock(url, "s"), StudyLock(url, "s"), StudyLock(url, "other")
    a.acquire()
    with other:  # another study's lock is independent
        pass
    got = threading.Event()
    t = threading.Thread(target=lambda: (b.acquire(), got.set()))
    t.start()
    assert not got.wait(1.0), "a second holder got the lock while the first held it"
    a.release()
    assert got.wait(15), "the lock was not handed over after release"
    t.join()
    b.release()
    if not url.startswith("sqlite"):
        _kill_connection(url, a)
        a.acquire()  # reconnects instead of failing the worker
        a.release()
    for lk in (a, b, other):
        lk.close()
