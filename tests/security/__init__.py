"""Security suite: attacks on a *running* broker over real sockets (issue 4).

Every test asserts the defence and that a well-behaved client on the same broker keeps
working. Run ``.venv/bin/pytest tests/security`` against Bastion, or
``BASTION_TEST_BROKER=mosquitto .venv/bin/pytest tests/security`` to validate the attacks
against Debian's mosquitto (tests of defences mosquitto lacks are then skipped).
"""
