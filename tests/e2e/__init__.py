"""End-to-end persistence suite (issue 7): real ``bastion serve`` processes on their data
directories, real MQTT clients, the ``bastion keys`` CLI as a separate process. Checks what is
on the disk (no plaintext at rest), what survives a restart, key rotation under load, refused
corrupt databases and wrong keys, and ``--no-persistence``. Bastion-only.
"""
