"""``python -m smmemu``: the command line (:func:`smmemu.cli.main`)."""

from __future__ import annotations

from smmemu.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
