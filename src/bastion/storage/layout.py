"""Where persistent state lives: the data directory, its default, and the files inside it.

Shared by ``sqlite.py`` (the database file), ``keys.py`` (the default master key file) and
``cli/keys.py``; the broker's runtime will use the same default so both find one directory.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

import structlog

from bastion.storage.errors import StorageError

__all__ = [
    "DATABASE_NAME",
    "DATA_DIR_ENV",
    "DEFAULT_DATA_DIR",
    "MASTER_KEY_NAME",
    "database_path",
    "default_data_dir",
    "default_key_file",
    "ensure_data_dir",
]

log = structlog.get_logger("bastion.storage")

DATA_DIR_ENV = "BASTION_DATA_DIR"
"""Environment variable that overrides the default data directory."""
DEFAULT_DATA_DIR = "bastion-state"
"""The default data directory, relative to the working directory."""
DATABASE_NAME = "bastion.db"
MASTER_KEY_NAME = "master.key"
DATA_DIR_MODE = 0o700


def default_data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$BASTION_DATA_DIR`` if set and non-empty, else ``./bastion-state``."""
    env = os.environ if environ is None else environ
    value = env.get(DATA_DIR_ENV, "")
    return Path(value) if value else Path(DEFAULT_DATA_DIR)


def database_path(data_dir: Path) -> Path:
    """The database file of ``data_dir``."""
    return data_dir / DATABASE_NAME


def default_key_file(data_dir: Path) -> Path:
    """The master key file created in ``data_dir`` when no key is configured."""
    return data_dir / MASTER_KEY_NAME


def ensure_data_dir(data_dir: Path) -> Path:
    """Create ``data_dir`` with mode 0700 if missing; warn if others may enter an existing one."""
    try:
        data_dir.mkdir(mode=DATA_DIR_MODE, parents=True, exist_ok=True)
        mode = stat.S_IMODE(data_dir.stat().st_mode)
    except FileExistsError:
        raise StorageError(f"data directory {data_dir} exists and is not a directory") from None
    except OSError as exc:
        raise StorageError(
            f"cannot create data directory {data_dir}: {exc.strerror or exc}"
        ) from None
    if not data_dir.is_dir():
        raise StorageError(f"data directory {data_dir} exists and is not a directory")
    if mode & 0o077:
        log.warning(
            "storage.data_dir_permissions",
            path=str(data_dir),
            mode=f"{mode:04o}",
            hint=f"chmod 700 {data_dir}",
        )
    return data_dir
