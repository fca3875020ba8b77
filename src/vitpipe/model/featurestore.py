"""Where the feature cache keeps its entries: one SQLite file, one row per image and feature key.

One indexed file instead of a file per image (12,500 images would be 12,500 tiny files) or per
split (adding 5 images would recompute them all). SQLite (Python's standard library) gives what
queued ``dvc exp run`` workers sharing the cache need: writes are transactions, so a reader never
sees half an entry, and two processes may write at once (WAL journal; a writer waits for the
other's lock). Each row carries its CRC-32: an entry that does not match is reported as missing
and recomputed, and a file that is not a readable database makes the cache step aside with a
warning (features are then computed, not stored). A read's connection lives for the read; a
writer's for one pass of the backbone, opened at its first batch, after the DataLoader's workers
have forked, so no connection is carried into a child process. A lock file per feature key makes
two processes that need the same missing features compute them once (:meth:`FeatureStore.computing`).
This module imports no torch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import filelock

from vitpipe.cachedir import ENV, make_cache_dir

logger = logging.getLogger(__name__)

FILENAME = "features.sqlite"
_BUSY_TIMEOUT_S = 120.0  # how long a writer waits for another process's transaction
_CHUNK = 900  # keys per SELECT ... IN (...): under SQLite's oldest limit of 999 variables
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS features (feature_key TEXT NOT NULL, image TEXT NOT NULL, "
    "crc INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (feature_key, image)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS feature_keys (feature_key TEXT PRIMARY KEY, parts TEXT NOT NULL)",
)


class FeatureStore:
    """``(feature key, image content hash) -> bytes`` in ``root/features.sqlite``."""

    def __init__(self, root: Path):
        self.path = Path(root) / FILENAME
        self.unusable = False  # set after the first database error: the run goes on without the cache
        self.damaged = 0  # entries found damaged (and so reported missing)

    def open(self) -> sqlite3.Connection:
        """A connection in autocommit mode, the file in WAL mode (readers and a writer at once).

        Raises:
            sqlite3.Error: the folder or the file cannot be made or opened (a read-only or full disk
                included), which :meth:`step_aside` turns into one warning.
        """
        try:
            make_cache_dir(self.path.parent)  # the cache root gets vitpipe's tag when it is new
        except OSError as exc:
            raise sqlite3.OperationalError(f"cannot create {self.path.parent}: {exc.strerror or exc}") from None
        conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode=WAL")  # kept in the file
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL stays consistent; commits skip an fsync
        except BaseException:
            conn.close()
            raise
        return conn

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = self.open()
        try:
            yield conn
        finally:
            conn.close()

    def step_aside(self, exc: sqlite3.Error) -> None:
        """Warns once and stops using the file for this run: the cache is a speed-up, training goes on."""
        if not self.unusable:
            logger.warning("feature cache %s is unusable (%s); features not cached, training goes on (free "
                           "space there, set %s to a writable folder, or `vitpipe cache --clear`)",
                           self.path, exc, ENV)
        self.unusable = True

    def get(self, feature_key: str, images: Sequence[str]) -> dict[str, bytes]:
        """The stored, intact entries among ``images`` (content hashes); damaged ones are left out."""
        if self.unusable or not self.path.exists():
            return {}
        found: dict[str, bytes] = {}
        try:
            with self._connect() as conn:
                if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'features'").fetchone() is None:
                    return {}  # created by a writer that has not committed its first entries yet
                for start in range(0, len(images), _CHUNK):
                    chunk = list(images[start:start + _CHUNK])
                    rows = conn.execute(
                        f"SELECT image, crc, data FROM features WHERE feature_key = ? AND image IN "
                        f"({','.join('?' * len(chunk))})", [feature_key, *chunk])
                    for image, crc, data in rows:
                        if zlib.crc32(data) == crc:
                            found[image] = bytes(data)
                        else:
                            self.damaged += 1
        except sqlite3.Error as exc:
            self.step_aside(exc)
            return {}
        return found

    @contextlib.contextmanager
    def computing(self, feature_key: str) -> Iterator[None]:
        """Holds ``feature_key``'s lock file while the block computes its missing entries.

        Two queued experiments that need the same features at once (``dvc queue start -j 2``) then
        compute them once: the second waits, and finds them stored. Without a usable cache folder
        there is nothing to share and no lock is taken.
        """
        if self.unusable:
            yield
            return
        try:
            locks = make_cache_dir(self.path.parent / "locks")  # one small file per feature key, kept
            lock = filelock.FileLock(locks / f"{feature_key}.lock")
            try:
                lock.acquire(timeout=0)
            except filelock.Timeout:
                logger.info("another process is computing these features; waiting to read them")
                lock.acquire()
        except OSError as exc:  # a read-only or full disk: compute without sharing
            self.step_aside(sqlite3.OperationalError(f"cannot lock {self.path.parent}: {exc.strerror or exc}"))
            yield
            return
        try:
            yield
        finally:
            lock.release()

    @contextlib.contextmanager
    def writer(self, feature_key: str, *, parts: dict[str, Any]) -> Iterator[_Writer]:
        """A :class:`_Writer` for ``feature_key``; its connection is closed on exit."""
        write = _Writer(self, feature_key, parts)
        try:
            yield write
        finally:
            write.close()

    def put(self, feature_key: str, entries: Iterable[tuple[str, bytes]], *, parts: dict[str, Any]) -> None:
        """Stores ``(image, data)`` entries in one transaction."""
        with self.writer(feature_key, parts=parts) as write:
            write(entries)

    def count(self) -> int:
        """How many entries the store holds (0 when it is missing or unusable)."""
        if not self.path.exists():
            return 0
        try:
            with self._connect() as conn:
                return int(conn.execute("SELECT count(*) FROM features").fetchone()[0])
        except sqlite3.Error:
            return 0


class _Writer:
    """``write(entries)``: stores ``(image, data)`` entries, one transaction per call.

    One connection for all calls (each close of the last connection checkpoints the WAL into the
    file, which costs more than the transaction), opened at the first call, so after the
    DataLoader's workers have forked.
    """

    def __init__(self, store: FeatureStore, feature_key: str, parts: dict[str, Any]):
        self.store, self.feature_key, self.parts = store, feature_key, parts
        self.conn: sqlite3.Connection | None = None

    def __call__(self, entries: Iterable[tuple[str, bytes]]) -> None:
        if self.store.unusable:
            return
        rows = [(self.feature_key, image, zlib.crc32(data), data) for image, data in entries]
        try:
            if self.conn is None:
                self.conn = self.store.open()
                _transaction(self.conn, "INSERT OR IGNORE INTO feature_keys VALUES (?, ?)",
                             [(self.feature_key, json.dumps(self.parts, sort_keys=True))])
            _transaction(self.conn, "INSERT OR REPLACE INTO features VALUES (?, ?, ?, ?)", rows)
        except sqlite3.Error as exc:
            self.store.step_aside(exc)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _transaction(conn: sqlite3.Connection, sql: str, rows: list[tuple]) -> None:
    """``sql`` for each row, with the tables created if missing, in one write transaction."""
    conn.execute("BEGIN IMMEDIATE")  # take the write lock now: waits (busy timeout) for another writer
    try:
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.executemany(sql, rows)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
