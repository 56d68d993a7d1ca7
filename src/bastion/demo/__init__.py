"""``bastion demo``: the reference system end to end, on one machine, from nothing.

Builds a state directory (dev PKI, one credential and a least-privilege ACL per client, the
broker config), runs the broker and the services as child processes, watches them with a
read-only client and shows it live; ``attacks.py`` is the scripted attacker of ``--attack``.
Sits between ``cli`` (which parses the options) and the packages it assembles.
"""
