"""``python -m bench NAME [OPTIONS]`` from the checkout's root: the same command, arguments
and help as ``finops bench`` (one parser: the CLI's)."""

from __future__ import annotations

import sys

import typer.main

from finops.cli import app


def main() -> None:
    """Run ``finops bench`` with this process's arguments, named ``python -m bench`` in its help."""
    command = typer.main.get_command(app).commands["bench"]
    command.main(args=sys.argv[1:], prog_name="python -m bench")


if __name__ == "__main__":
    main()
