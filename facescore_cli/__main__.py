"""`facescore` (the console script) and `python -m facescore_cli`."""
from __future__ import annotations

import sys


def main() -> None:
    # `--version` alone is answered before typer, rich and the commands are imported: ~0.1 s less.
    if sys.argv[1:] == ["--version"]:
        from . import __version__

        print(__version__)
        return
    from .cli import app

    app(prog_name="facescore")


if __name__ == "__main__":
    main()
