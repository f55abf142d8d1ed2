"""SQLite connection handling for service.store.sqlite: durability settings, one serialised writer,
one reader connection per thread, and schema creation/versioning.

WAL with ``synchronous=FULL`` makes each commit durable before it returns (the WAL is
fsynced on commit) while readers keep reading the last committed state. SQLite admits one
writer at a time anyway; a lock turns "database is locked" retries into an orderly queue.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class StoreVersionError(RuntimeError):
    """The database was written by a newer facegate (or is not a facegate store)."""


class StoreInUse(RuntimeError):
    """Maintenance needs the store to itself, or a server start found maintenance running."""


class StoreLock:
    """An advisory lock beside the database: every open store holds it shared; maintenance
    that rewrites every row (key rotation) holds it exclusively, so it never runs under a
    serving process whose keys or galleries it would invalidate. Released by close() or by
    the process's death (flock), so a killed server never leaves it stale."""

    def __init__(self, db_path: Path, *, exclusive: bool) -> None:
        self.path = db_path.with_name(db_path.name + ".lock")
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            if exclusive:
                raise StoreInUse(
                    f"{db_path} is open in another process (a running facegate server?);"
                    " stop it first"
                ) from None
            raise StoreInUse(
                f"{db_path} is locked by maintenance (`facegate crypto ...`); wait for it"
            ) from None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


class SqliteDb:
    def __init__(self, path: Path, *, busy_timeout_ms: int = 10_000) -> None:
        self.path = path
        self._busy_timeout_ms = int(busy_timeout_ms)
        self._closed = False
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self.writer = self._connect()

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: transactions are explicit; check_same_thread=False: the
        # writer is shared behind a lock, and close() closes every thread's reader.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def _reader(self) -> sqlite3.Connection:
        if self._closed:
            raise RuntimeError("store is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def one(self, sql: str, params: tuple[object, ...] = ()) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self._reader().execute(sql, params).fetchone()
        return row

    def all(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        return self._reader().execute(sql, params).fetchall()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT on the writer; rolled back if the body raises."""
        with self._write_lock:
            if self._closed:
                raise RuntimeError("store is closed")
            db = self.writer
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            try:
                db.execute("COMMIT")
            except BaseException:
                # A failed COMMIT (disk full, I/O error) leaves the transaction open.
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def migrate(self, schema: str, version: int, upgrades: Mapping[int, str]) -> int:
        """Create the schema in an empty database, or upgrade an older one step by step
        (``upgrades[v]`` takes version v to v+1), in one transaction; refuse newer or
        foreign databases. Returns the version found (0 = created)."""
        with self._write_lock:
            found = int(self.writer.execute("PRAGMA user_version").fetchone()[0])
            if found > version:
                raise StoreVersionError(
                    f"{self.path} has schema version {found}; this facegate knows up to {version}"
                )
            if found == version:
                return found
            tables = self.writer.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
            ).fetchone()[0]
            if found == 0 and tables:
                raise StoreVersionError(f"{self.path} is not a facegate store")
            if found and any(v not in upgrades for v in range(found, version)):
                raise StoreVersionError(f"{self.path}: no upgrade from schema version {found}")
            scripts = [schema] if found == 0 else [upgrades[v] for v in range(found, version)]
            self.writer.execute("BEGIN IMMEDIATE")
            try:
                for script in scripts:
                    for statement in script.split(";"):
                        if statement.strip():
                            self.writer.execute(statement)
                self.writer.execute(f"PRAGMA user_version = {int(version)}")
                self.writer.execute("COMMIT")
            except BaseException:
                self.writer.execute("ROLLBACK")
                raise
            return found

    def rewrite_file(self) -> None:
        """Rebuild the database file (VACUUM) and empty the WAL, so that no old version of
        a rewritten row survives in free pages or the log (e.g. plaintext templates)."""
        with self._write_lock:
            self.writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self.writer.execute("VACUUM")
            self.writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            self.writer.close()
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
