"""The ``[storage]`` table: the data directory, the master key, durability and size bounds.

Part of the settings schema (``schema.py`` is the root); ``bastion.storage`` and the
``bastion keys`` commands read it, and the broker will once persistence is wired in.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

from bastion.config.base import PATH_MAX as _PATH_MAX
from bastion.config.base import Section as _Section

SyncMode = Literal["full", "normal"]

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _check_env_name(name: str) -> str:
    if not _ENV_NAME.fullmatch(name):
        raise PydanticCustomError(
            "bastion_env_name",
            "expected an environment variable name (letters, digits and '_', not starting "
            "with a digit), got {name}",
            {"name": json.dumps(name)},
        )
    return name


class StorageSettings(_Section):
    """Persistence and encryption at rest (the ``[storage]`` table)."""

    enabled: bool = Field(
        default=True,
        description=(
            "Keep durable sessions, queued and in-flight QoS 1/2 messages, retained messages "
            "and wills in an encrypted SQLite database in `data_dir`, so they survive a "
            "restart. `false` keeps them in memory only (lost on restart)."
        ),
    )
    data_dir: str | None = Field(
        default=None,
        min_length=1,
        max_length=_PATH_MAX,
        description=(
            "Directory of the database (`bastion.db`, with its `-wal` and `-shm` files), "
            "created with mode 0700 if missing. Unset: `$BASTION_DATA_DIR`, else "
            "`./bastion-state`. A relative path is resolved against the configuration file's "
            "directory."
        ),
    )
    key_file: str | None = Field(
        default=None,
        min_length=1,
        max_length=_PATH_MAX,
        description=(
            "Master key file (JSON, written by `bastion keys init`); refused if other users "
            "may write it. Unset, and `key_env` unset too: `master.key` in `data_dir`, "
            "created with mode 0600 on first start (with a warning: keep production keys "
            "elsewhere). Setting both this and the `key_env` variable is an error."
        ),
    )
    key_env: Annotated[str, AfterValidator(_check_env_name)] = Field(
        default="BASTION_MASTER_KEY",
        min_length=1,
        max_length=255,
        description=(
            "Environment variable that may hold the master key instead of a key file: base64 "
            "of 32 random bytes (`openssl rand -base64 32`); `NEW,OLD` while rotating it."
        ),
    )
    sync: SyncMode = Field(
        default="full",
        description=(
            "`full` fsyncs the write-ahead log at every commit, so what a PUBACK/PUBCOMP "
            "promised survives a power loss. `normal` fsyncs only at checkpoints: it "
            "survives a crash of Bastion, but a power loss may undo the last commits."
        ),
    )
    group_commit_interval_ms: int = Field(
        default=1,
        ge=0,
        le=1000,
        description=(
            "Longest time, in milliseconds, a write waits to share one commit (and fsync) "
            "with others; acknowledgements that need it wait too. Under load the writes that "
            "arrive while a commit runs form the next batch anyway; 0 commits each write "
            "alone. Larger values mean fewer fsyncs but longer waits for PUBACK."
        ),
    )
    group_commit_max_batch: int = Field(
        default=256,
        ge=1,
        le=65535,
        description="Most writes in one group commit; a full batch commits at once.",
    )
    max_db_size_mb: int = Field(
        default=1024,
        ge=1,
        le=1_048_576,
        description=(
            "Largest size of the database, in MiB. When it is reached, writes that need "
            "space fail: MQTT 5 publishers get 0x97 (quota exceeded)."
        ),
    )
    purge_interval_s: float = Field(
        default=60.0,
        gt=0,
        le=86_400,
        allow_inf_nan=False,
        description=(
            "Seconds between sweeps that delete expired sessions and messages from the "
            "database and re-encrypt records still sealed under an old data key."
        ),
    )


__all__ = ["StorageSettings", "SyncMode"]
