"""``python -m kilndb.cli``: the same as the ``kiln`` console script."""

from __future__ import annotations

from kilndb.cli.main import main

if __name__ == "__main__":
    main()
