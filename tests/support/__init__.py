"""Black-box test support shared by ``tests/interop`` and ``tests/security``: the broker under
test as a real process (``brokerproc``), a spec-written raw MQTT client (``rawcodec``,
``rawclient``), a bounded-wait paho wrapper (``pahoclient``) and the fixtures' building blocks
(``clients``, ``settings``, ``credentials``). Nothing here imports bastion.
"""
