"""Bastion: a hardened IoT messaging hub (MQTT 3.1.1/5.0 broker, secure by default).

The package is layered as ``shared/ARCHITECTURE.md`` describes: pure protocol code in
``mqtt/``, routing in ``broker/``, sockets only in ``transport/``, assembly in ``runtime/``.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
