"""A short mutual-exclusion section across workers that share one storage.

Optuna's storages have no lock, and two workers that enqueue a stage's grid at the same moment
would each enqueue it. The few steps that must not interleave (fail dead trials, enqueue what
is missing, record a decision) run under this lock, which lives where the studies live:
PostgreSQL's advisory locks, MySQL's ``GET_LOCK``, and for SQLite an ``flock`` on a file beside
the database (SQLite is for workers on one machine).
"""

from __future__ import annotations

import contextlib
import fcntl
import zlib
from collections.abc import Iterator
from pathlib import Path

import optuna
import sqlalchemy


def _key(name: str) -> int:
    return zlib.crc32(name.encode())  # fits PostgreSQL's bigint advisory-lock key


@contextlib.contextmanager
def storage_lock(storage: optuna.storages.BaseStorage, name: str) -> Iterator[None]:
    """Hold the lock ``name`` in ``storage`` (blocking) for the ``with`` body."""
    # A study's storage is Optuna's cache in front of the RDB storage: lock the one behind it.
    backend_storage = getattr(storage, "_backend", storage)
    engine = getattr(backend_storage, "engine", None)
    if engine is None:  # in-memory storage: one process, nothing to lock
        yield
        return
    backend = engine.url.get_backend_name()
    if backend == "sqlite":
        database = engine.url.database
        if not database or database == ":memory:":
            yield
            return
        with open(Path(database).with_name(Path(database).name + ".lock"), "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
        return
    with engine.connect() as conn:
        if backend == "postgresql":
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": _key(name)})
            unlock = sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": _key(name)}
        elif backend in ("mysql", "mariadb"):
            conn.execute(sqlalchemy.text("SELECT GET_LOCK(:n, -1)"), {"n": name[:64]})
            unlock = sqlalchemy.text("SELECT RELEASE_LOCK(:n)"), {"n": name[:64]}
        else:
            raise NotImplementedError(f"no lock for storage backend {backend!r}; use SQLite, "
                                      f"PostgreSQL or MySQL.")
        conn.commit()
        try:
            yield
        finally:
            conn.execute(*unlock)
            conn.commit()
