"""The ``kiln`` command-line interface (``kilndb.cli:main``).

``kiln put/get/history/delete/keys/replay/tail`` work with facts, ``kiln stores/stats/
compact/retention/check`` look after a database and ``kiln demo`` is a guided tour. See
``kiln --help`` and docs/cli.md.
"""

from __future__ import annotations

from kilndb.cli.main import cli, main

__all__ = ["cli", "main"]
