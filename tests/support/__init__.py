"""Black-box test support shared by the suites that run real processes (``tests/interop``,
``tests/security``, ``tests/crash``, ``tests/e2e``, ``tests/services``, ``tests/logger``): the
broker under test as a real process (``brokerproc``), a broker restarted on the same port and
data directory (``restartable``), a private PostgreSQL server (``postgres``), a spec-written raw
MQTT client (``rawcodec``, ``rawclient``), a bounded-wait paho wrapper (``pahoclient``) and the
fixtures' building blocks (``clients``, ``settings``, ``credentials``). Nothing here imports
bastion.
"""
