"""Fixtures shared by the storage tests: a master key file outside the data directory, and a
store opened on it (closed after the test; a no-op when the test closed it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from storekit import key_file

from bastion.storage.keys import FileKeyProvider
from bastion.storage.sqlite import SqliteStore, open_store


@pytest.fixture
def provider(tmp_path: Path) -> FileKeyProvider:
    return key_file(tmp_path / "keys")


@pytest.fixture
def store(tmp_path: Path, provider: FileKeyProvider) -> Iterator[SqliteStore]:
    opened = open_store(tmp_path / "state", provider)
    yield opened
    opened.close()
