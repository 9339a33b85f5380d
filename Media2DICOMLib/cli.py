"""The ``media2dicom`` command line.

Each subcommand lives in a module of :mod:`Media2DICOMLib.commands` that
provides ``register(subparsers)``. That function adds the subcommand's parser
and sets ``handler`` to a function that takes the parsed arguments and returns
an exit code.

Exit codes: 0 success, 1 a library error (bad input, a server that rejected
or failed), 2 wrong usage, 3 a send that left objects in the outbox,
130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings
from typing import Optional, Sequence

from Media2DICOMLib import __version__
from Media2DICOMLib.errors import Media2DICOMError, UsageError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_SENT = 3
EXIT_INTERRUPTED = 130

# Command modules, in the order their subcommands are listed by --help.
COMMAND_MODULES = (
    "encapsulate",
    "capture",
    "network",
    "servers",
    "outbox",
    "query",
    "mesh",
)
# The module of each subcommand. Only that module is imported to run it, so a
# command does not pay for the imports of the others (pynetdicom, PyAV).
COMMAND_MODULE_OF = {
    "encapsulate": "encapsulate",
    "capture": "capture",
    "echo": "network",
    "send": "network",
    "servers": "servers",
    "outbox": "outbox",
    "query": "query",
    "retrieve": "query",
    "mesh": "mesh",
}

LOGGER = logging.getLogger(__name__)


def build_parser(argv: Optional[Sequence[str]] = None) -> argparse.ArgumentParser:
    """Build the parser with every subcommand, or only the one ``argv`` names."""
    parser = argparse.ArgumentParser(
        prog="media2dicom",
        description=(
            "Turn 3D models, screenshots, cine and video into DICOM objects in the "
            "source study, and send them to a PACS."
        ),
    )
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log more: once for INFO, twice for DEBUG (DEBUG may show patient data)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    requested = _requested_command(argv)
    modules = [COMMAND_MODULE_OF[requested]] if requested else COMMAND_MODULES
    for name in modules:
        try:
            module = importlib.import_module(f"Media2DICOMLib.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"Media2DICOMLib.commands.{name}":
                continue
            raise
        module.register(subparsers)
    return parser


def _requested_command(argv: Optional[Sequence[str]]) -> Optional[str]:
    """Return the subcommand ``argv`` names, or None when it names none."""
    for argument in argv or ():
        if argument in ("-h", "--help", "--version"):
            return None
        if not argument.startswith("-"):
            return argument if argument in COMMAND_MODULE_OF else None
    return None


# Loggers whose failures the commands print themselves, one line per object or
# server, so at the default verbosity their log records would repeat them.
_REPORTED_BY_COMMANDS = (
    "pynetdicom",
    "Media2DICOMLib.network",
    "Media2DICOMLib.outbox",
    "Media2DICOMLib.dicomweb",
    "Media2DICOMLib.query",
)


def configure_logging(verbose: int) -> None:
    """Log warnings to stderr by default, INFO with -v and DEBUG with -vv.

    The handler filters records rather than changing logger levels, so calling
    :func:`main` repeatedly in one process (as the tests do) changes nothing
    for other code in that process.
    """
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _CommandLineHandler):
            root.removeHandler(handler)
    root.addHandler(_CommandLineHandler(verbose))
    root.setLevel(level)
    if verbose < 2:
        # pydicom repeats its log messages as Python warnings, value included;
        # the log record (with the value withheld) is enough.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom\.")


class _CommandLineHandler(logging.StreamHandler):
    def __init__(self, verbose: int) -> None:
        super().__init__(sys.stderr)
        self.verbose = verbose
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def filter(self, record: logging.LogRecord) -> bool:
        reported = record.name.split(".")[0] == "pynetdicom" or any(
            record.name == name or record.name.startswith(name + ".")
            for name in _REPORTED_BY_COMMANDS
        )
        if self.verbose == 0 and reported:
            return False
        # pynetdicom logs every PDU at INFO; with -v its warnings are enough.
        if self.verbose == 1 and record.name.startswith("pynetdicom"):
            return record.levelno >= logging.WARNING
        return super().filter(record)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.handler(args) or EXIT_OK)
    except UsageError as exc:
        print(f"media2dicom {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Media2DICOMError as exc:
        print(f"media2dicom: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("media2dicom: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
