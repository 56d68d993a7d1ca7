"""Fixtures of the data logger's suite: the store on SQLite and on a real PostgreSQL server.

``backend`` is parametrised: every test that takes it runs once against ``logger.db`` and
once against a fresh database of the PostgreSQL server from ``support/postgres.py`` (a
private cluster unless ``BASTION_TEST_POSTGRES_URL`` names one). ``RawRows`` edits stored
rows behind the store's back, as an attacker with the files (or the database) could.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import psycopg
import pytest

from bastion.storage.logstore import LoggedMessage, LogStore, logger_database_path, open_logstore
from support.postgres import fresh_database, postgres_server

NO_ENV: Final[Mapping[str, str]] = {}
"""The environment the stores see: no $BASTION_MASTER_KEY from the developer's shell."""
BACKENDS: Final = ("sqlite", pytest.param("postgres", marks=pytest.mark.postgres))
T0: Final = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def reading(
    device: str, value: float, *, at: datetime = T0, topic: str | None = None, qos: int = 1
) -> LoggedMessage:
    """A sensor reading as the simulators publish it (the ``unit`` must never hit the disk)."""
    payload = (
        f'{{"device":"{device}","ts":"{at:%Y-%m-%dT%H:%M:%S}Z","value":{value},"unit":"C"}}'
    ).encode()
    return LoggedMessage(topic or f"temp/{device}", payload, qos, False, at)


def readings(count: int, *, start: datetime = T0, step: float = 1.0) -> list[LoggedMessage]:
    """``count`` readings of three devices, ``step`` seconds apart."""
    devices = ("sensor1", "sensor2", "sensor3")
    return [
        reading(devices[i % 3], 20 + i / 100, at=start + timedelta(seconds=i * step))
        for i in range(count)
    ]


def _blob(value: object) -> bytes:
    assert isinstance(value, bytes | memoryview), f"not a blob: {value!r}"
    return bytes(value)


@dataclass
class RawRows:
    """Direct access to the stored rows, bypassing the store (for tampering tests)."""

    backend: Backend
    _sqlite: sqlite3.Connection | None = field(default=None, repr=False)

    @property
    def table(self) -> str:
        return "log_messages" if self.backend.name == "sqlite" else "bastion_log_messages"

    def _run(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        if self.backend.name == "sqlite":
            if self._sqlite is None:
                path = logger_database_path(self.backend.state_dir)
                self._sqlite = sqlite3.connect(path, isolation_level=None)
            return list(self._sqlite.execute(sql, params).fetchall())
        url = self.backend.database_url
        assert url is not None
        with psycopg.connect(url, autocommit=True) as connection:
            cursor = connection.execute(sql.replace("?", "%s"), params)
            return list(cursor.fetchall()) if cursor.description else []

    def rows(self) -> list[tuple[int, str, bytes, bytes, str]]:
        """(id, topic, payload, properties, key_id) of every stored row, by id."""
        found = self._run(
            f"SELECT id, topic, payload, properties, key_id FROM {self.table} ORDER BY id"
        )
        return [(int(str(r[0])), str(r[1]), _blob(r[2]), _blob(r[3]), str(r[4])) for r in found]

    def set(self, row_id: int, column: str, value: object) -> None:
        self._run(f"UPDATE {self.table} SET {column} = ? WHERE id = ?", (value, row_id))

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
            self._sqlite = None


@dataclass
class Backend:
    """One place the logger's store can live, and how to open it."""

    name: str
    state_dir: Path
    database_url: str | None = None
    opened: list[LogStore] = field(default_factory=list)

    def open(self, *, create: bool = False, key_file: Path | None = None) -> LogStore:
        """The store (made with ``create``); closed at the end of the test."""
        store = open_logstore(
            self.state_dir,
            database_url=self.database_url,
            key_file=key_file,
            environ=NO_ENV,
            create=create,
        )
        self.opened.append(store)
        return store

    def filled(self, messages: list[LoggedMessage]) -> LogStore:
        """A new store holding ``messages`` (one batch)."""
        store = self.open(create=True)
        store.append(messages)
        return store

    def cli_args(self) -> list[str]:
        """``--state-dir`` (and ``--database-url``) for ``bastion logger`` commands."""
        args = ["--state-dir", str(self.state_dir)]
        if self.database_url is not None:
            args += ["--database-url", self.database_url]
        return args


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server for the whole session (skipped locally, failed in CI, if none)."""
    with postgres_server() as url:
        yield url


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    state_dir = tmp_path / "state"
    if request.param == "sqlite":
        chosen = Backend("sqlite", state_dir)
        yield chosen
        _close_all(chosen)
        return
    server: str = request.getfixturevalue("postgres_url")
    with fresh_database(server) as url:
        chosen = Backend("postgres", state_dir, url)
        yield chosen
        _close_all(chosen)


@pytest.fixture
def raw(backend: Backend) -> Iterator[RawRows]:
    rows = RawRows(backend)
    yield rows
    rows.close()


def _close_all(backend: Backend) -> None:
    for store in backend.opened:
        store.close()
