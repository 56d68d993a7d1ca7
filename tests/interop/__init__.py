"""Black-box interop tests: the broker under test against real third-party MQTT clients.

Run ``.venv/bin/pytest tests/interop`` to test Bastion (``python -m bastion serve``), or
``BASTION_TEST_BROKER=mosquitto .venv/bin/pytest tests/interop`` to validate the suite itself
against Debian's mosquitto; tests of documented Bastion-only behaviour are then skipped.
"""
