"""The ``rerefine`` command line.

Each sub-command lives in ``rerefine.flows.commands.<name>`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a callable
taking ``(args, settings)`` and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import sys
from pathlib import Path

from rerefine.flows import __version__
from rerefine.flows.settings import load_settings
from rerefine.common.atomicfile import write_atomic
from rerefine.common.errors import RerefineError

COMMANDS = ["info", "db", "compare", "site", "sharpen", "harvest", "sample_archive", "metrics", "diffmap", "nightly", "entry", "serve", "refine", "validate", "douse"]

log = logging.getLogger("rerefine")


def _clean(obj):
    """Make numpy scalars and non-finite floats JSON-safe (NaN/inf become null)."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        try:
            obj = obj.item()
        except (ValueError, AttributeError):
            obj = obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def emit_json(obj, dest: str | None) -> None:
    """Write ``obj`` as JSON to ``dest`` (``-`` is standard output), atomically for files."""
    if not dest:
        return
    text = json.dumps(_clean(obj), indent=2, allow_nan=False) + "\n"
    if dest == "-":
        sys.stdout.write(text)
        return
    write_atomic(dest, text)


class OneLineRerefineErrors(logging.Filter):
    """Drop the traceback of a logged :class:`RerefineError` (without ``--debug``).

    Those errors say in one line which entry or file failed and why (the CLI prints that line
    last), yet Prefect logs every failed task and flow with its traceback, which on a terminal
    buries the cause. Handlers that saw the record before (Prefect's own, sending logs to its
    API) keep the traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], RerefineError):
            record.exc_info = None
            record.exc_text = None
        return True


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rerefine",
        description="Automated re-refinement of cryo-EM models against their EMDB maps.",
    )
    parser.add_argument("--version", action="version", version=f"rerefine {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"rerefine.flows.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.debug else (logging.WARNING if args.quiet else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # Prefect's client logs every API request at INFO; that is noise on a terminal.
    for noisy in ("httpx", "httpcore", "distributed", "numba", "alembic"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    if not args.debug:
        for handler in logging.getLogger().handlers:
            if not any(isinstance(f, OneLineRerefineErrors) for f in handler.filters):
                handler.addFilter(OneLineRerefineErrors())
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        settings = load_settings()
        return int(args.func(args, settings) or 0)
    except RerefineError as exc:
        if args.debug:
            raise
        print(f"rerefine {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"rerefine {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
