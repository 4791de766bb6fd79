"""``finops stack up|down|status``: the local Apache Kafka broker (the library: ``finops/stack.py``)."""

from __future__ import annotations

import json

import typer

from .common import app, command, err, load_settings, out, setup_logging

stack_app = typer.Typer(help="The local Apache Kafka broker (skipped when FINOPS_KAFKA_BOOTSTRAP is set).",
                        no_args_is_help=True)
app.add_typer(stack_app, name="stack")


@stack_app.command("up")
@command
def stack_up(verbose: bool = typer.Option(False, "--verbose", "-v", help="Show client logs."),
             as_json: bool = typer.Option(False, "--json", help="Print the resulting status as JSON.")) -> None:
    """Fetch the Kafka jars once, start one KRaft broker on 127.0.0.1, create the v1 topics.

    Running it again is a no-op. Example: FINOPS_KAFKA_PORT=19092 finops stack up
    """
    from .. import stack

    setup_logging(verbose)
    print_status(stack.up(load_settings(), log=err.print), as_json)


def print_status(status, as_json: bool) -> None:
    """Print a :class:`finops.stack.StackStatus`: its lines, or JSON with ``as_json``."""
    from dataclasses import asdict

    if as_json:
        out.print_json(json.dumps(asdict(status), default=str))
    else:
        for line in status.lines():
            out.print(line)


@stack_app.command("down")
@command
def stack_down() -> None:
    """Stop the local broker (its data stays in the data dir). Example: finops stack down"""
    from .. import stack

    stack.down(load_settings(), log=err.print)


@stack_app.command("status")
@command
def stack_status(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """What runs where: broker pid, bootstrap, data dir, log file, topics. Example: finops stack status --json"""
    from .. import stack

    setup_logging(False)
    print_status(stack.status(load_settings()), as_json)
