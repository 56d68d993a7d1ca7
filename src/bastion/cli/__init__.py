"""Command-line interface: ``bastion`` and its subcommands (``main.py``, ``serve.py``).

The top layer: it parses arguments, loads settings and calls into the packages below it;
nothing imports it.
"""
