"""Entry point for ``python -m bastion``: the same command as the ``bastion`` script.

Delegates to ``bastion.cli.main``.
"""

from bastion.cli.main import main

if __name__ == "__main__":
    main(prog_name="bastion")
