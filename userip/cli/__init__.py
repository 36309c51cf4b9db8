"""The ``userip`` console script: argparse front end over the library stages."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from pydantic import ValidationError

from userip.errors import UseripError

# Each entry is a module under userip/cli/commands with add_parser(subparsers) and run(args).
COMMANDS = ("prepare", "infer", "quantize", "export", "train", "evaluate", "report", "run", "baselines")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="userip", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"userip.cli.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "urllib3", "filelock", "faiss.loader"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.run(args) or 0)
    except (UseripError, OSError, ValidationError, ValueError, OverflowError) as exc:
        if args.verbose:
            raise
        print(f"userip {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"userip {args.command}: interrupted", file=sys.stderr)
        return 130


def one_line(exc: BaseException) -> str:
    """``exc`` as one line: an OS error names its file, a validation error its field.
    Bad input and settings never print a traceback (``-v`` shows it)."""
    from userip.config import describe

    if isinstance(exc, ValidationError):
        text = f"{exc.title}: {describe(exc)}"
    elif isinstance(exc, OSError) and exc.filename is not None:
        text = f"{exc.filename}: {exc.strerror or exc}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


