"""Fresh, empty databases on the real PostgreSQL / MariaDB servers of this machine kind."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import sqlalchemy as sa
from ci import need

SERVERS = {
    "postgresql": "postgresql+psycopg2://postgres@127.0.0.1:5432/test",
    "mysql": "mysql+pymysql://root@127.0.0.1:3306/test",
}


def fresh_database(kind: str) -> tuple[str, Callable[[], None]]:
    """Create a uniquely named database; returns its URL and a function that drops it.
    Skips when the server is unreachable (fails instead under CI=true)."""
    admin = sa.create_engine(SERVERS[kind], isolation_level="AUTOCOMMIT")
    name = f"autofuse_t_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as c:
            c.execute(sa.text(f"CREATE DATABASE {name}"))
    except sa.exc.OperationalError as e:
        msg = f"{kind} server not reachable at {SERVERS[kind]}: {str(e.orig).splitlines()[0]}"
        need(False, msg)
    url = SERVERS[kind].rsplit("/", 1)[0] + f"/{name}"

    def drop() -> None:
        with admin.connect() as c:
            force = " WITH (FORCE)" if kind == "postgresql" else ""
            c.execute(sa.text(f"DROP DATABASE IF EXISTS {name}{force}"))
        admin.dispose()

    return url, drop


def plain_url(url: str, scheme: str) -> str:
    """``url`` (one of :func:`fresh_database`'s) in the plain form most users type, without a
    driver: ``postgresql://``, ``mysql://`` or ``mariadb://``."""
    return scheme + "://" + url.split("://", 1)[1]


def select_only_user(url: str) -> tuple[str, Callable[[], None]]:
    """A MariaDB user granted nothing but ``SELECT`` on the database of ``url`` (a database of
    :func:`fresh_database`): the URL as that user, and a function that drops the user."""
    db = url.rsplit("/", 1)[1]
    user = f"af_ro_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(SERVERS["mysql"], isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f"CREATE USER '{user}'@'%'"))
        c.execute(sa.text(f"GRANT SELECT ON `{db}`.* TO '{user}'@'%'"))

    def drop() -> None:
        with admin.connect() as c:
            c.execute(sa.text(f"DROP USER IF EXISTS '{user}'@'%'"))
        admin.dispose()

    return url.replace("://root@", f"://{user}@", 1), drop
