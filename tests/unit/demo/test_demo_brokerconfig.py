"""The demo broker's ``bastion.toml`` (``demo/brokerconfig.py``), read back by bastion.config."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from bastion.config import load_settings
from bastion.demo.brokerconfig import MAX_PACKET_SIZE, BrokerPlan, config_text, write_config
from bastion.demo.statedir import StateLayout


def test_the_config_loads_with_every_hardening_setting(tmp_path: Path) -> None:
    layout = StateLayout(tmp_path)
    settings = write_config(layout, BrokerPlan("127.0.0.1", 18883))
    assert stat.S_IMODE(os.stat(layout.config).st_mode) == 0o600
    [listener] = settings.listeners
    assert (listener.host, listener.port) == ("127.0.0.1", 18883)
    assert listener.tls is not None
    assert listener.tls.min_version == "1.3"
    assert Path(listener.tls.certfile) == layout.server_cert
    assert Path(listener.tls.keyfile) == layout.server_key
    security = settings.security
    assert not security.allow_anonymous
    assert security.password_file is not None and Path(security.password_file) == layout.passwd
    assert security.acl_file is not None and Path(security.acl_file) == layout.acl
    assert security.audit_log is not None and Path(security.audit_log) == layout.audit_log
    assert security.client_id_patterns == ["%u", "%u-*"]
    assert security.require_will == ["sensor*", "door*"]
    assert settings.limits.client.action == "disconnect"
    assert settings.limits.client.messages_per_second is not None
    assert settings.mqtt.max_packet_size == MAX_PACKET_SIZE
    assert settings.storage.enabled
    assert settings.storage.data_dir is not None and Path(settings.storage.data_dir) == tmp_path
    assert settings.storage.key_file is None
    assert settings.logging.format == "json"


def test_paths_are_relative_so_the_directory_can_move(tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    write_config(StateLayout(old), BrokerPlan("127.0.0.1", 8883))
    assert str(old) not in old.joinpath("bastion.toml").read_text()
    new = tmp_path / "new"
    old.rename(new)
    settings = load_settings(new / "bastion.toml")
    assert settings.security.password_file == str(new / "passwd")


def test_a_key_file_is_passed_on(tmp_path: Path) -> None:
    key = tmp_path / "elsewhere" / "master.key"
    text = config_text(StateLayout(tmp_path / "demo"), BrokerPlan("127.0.0.1", 8883, key))
    assert f'key_file = "{key}"' in text
    settings = write_config(StateLayout(tmp_path), BrokerPlan("::1", 8883, key))
    assert settings.storage.key_file == str(key)
    assert settings.listeners[0].host == "::1"
