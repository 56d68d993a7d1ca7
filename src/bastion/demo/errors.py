"""The one error type of ``bastion demo``: something the user can fix, said in one line.

Raised by the state directory, the child processes and the orchestrator; ``cli/demo.py``
prints it as ``bastion: error: ...`` and exits with status 2.
"""

from __future__ import annotations

from bastion.errors import BastionError

__all__ = ["DemoError"]


class DemoError(BastionError):
    """The demo cannot start or go on; the message names the problem and what to do."""
