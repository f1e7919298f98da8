"""The ``hyperp`` command line: one module per verb, each with ``register(subparsers)``.

Verb modules import their heavy dependencies (torch, matplotlib) inside the handler, so that
``hyperp --help`` and the torch-free verbs start quickly.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Verb name -> module under hyperp.cli that defines register(subparsers).
VERBS: dict[str, str] = {
    "train": "hyperp.cli.train",
    "transfer": "hyperp.cli.transfer",
    "prepare": "hyperp.cli.prepare",
    "check": "hyperp.cli.check",
    "fit": "hyperp.cli.fit",
    "sweep": "hyperp.cli.sweep",
    "reproduce": "hyperp.cli.reproduce",
}


class UserError(Exception):
    """A mistake the user can fix; printed as one line, no traceback, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hyperp",
        description="Transferable hypersphere optimization (HyperP) for language models.",
        epilog="Run 'hyperp VERB --help' for the options and an example of each verb.",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for module_name in VERBS.values():
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = extra
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        # The reader went away (`hyperp ... | head`): stop quietly, as a tool ended by SIGPIPE.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except UserError as error:
        print(f"hyperp {args.verb}: error: {error}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as error:
        # Library code raises these for user mistakes with a message that names the fix.
        print(f"hyperp {args.verb}: error: {error}", file=sys.stderr)
        return 2


def add_verb(sub, name: str, *, help: str, example: str, description: str | None = None):
    """Create a verb parser whose --help ends with a worked example."""
    return sub.add_parser(
        name,
        help=help,
        description=description or help,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
