"""``media2dicom echo`` and ``media2dicom send``.

Both take a server from the settings (``--server NAME``) or given in full
(``--host``, ``--port``, ``--called-aet``). ``send`` copies every object into
the outbox first, so whatever is not stored can be retried later.

This module also contains the argument helpers the other network commands share.
"""

from __future__ import annotations

import argparse
import logging
import sys

from Media2DICOMLib.cli import EXIT_ERROR, EXIT_NOT_SENT, EXIT_OK
from Media2DICOMLib.errors import SettingsError
from Media2DICOMLib.network import collect_files, echo
from Media2DICOMLib.outbox import Outbox
from Media2DICOMLib.progress import TerminalProgress
from Media2DICOMLib.settings import (
    Server,
    Settings,
    load_settings,
    validate_ae_title,
    validate_host,
    validate_port,
)

LOGGER = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "echo",
        help="check a DICOM server with C-ECHO",
        description=(
            "Check a DICOM server with C-ECHO and print the round-trip time, or "
            "why it failed (refused, rejected with the server's reason, timed out)."
        ),
    )
    add_settings_argument(parser)
    add_server_arguments(parser)
    parser.set_defaults(handler=run_echo)

    parser = subparsers.add_parser(
        "send",
        help="send DICOM files to a server (through the outbox)",
        description=(
            "Send DICOM files with C-STORE, or with STOW-RS when --dicomweb is "
            "given. Each object is first copied into the outbox in the cache "
            "directory; objects the server does not store stay there for "
            "'media2dicom outbox retry'."
        ),
    )
    add_settings_argument(parser)
    add_server_arguments(parser)
    parser.add_argument(
        "paths", nargs="+", metavar="FILE_OR_DIR", help="DICOM files or folders"
    )
    parser.add_argument(
        "--no-uncompressed-fallback",
        dest="uncompressed_fallback",
        action="store_false",
        help=(
            "do not rewrite JPEG objects as Explicit VR Little Endian when the "
            "server accepts their SOP class only uncompressed"
        ),
    )
    parser.add_argument(
        "--dicomweb",
        action="store_true",
        help="send with DICOMweb STOW-RS to the server's DICOMweb URL",
    )
    parser.set_defaults(handler=run_send)


def add_settings_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--settings",
        metavar="FILE",
        help=(
            "settings file (default: $MEDIA2DICOM_SETTINGS, else the user's "
            "configuration folder)"
        ),
    )


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "server", "a server from the settings, or --host, --port and --called-aet"
    )
    group.add_argument("--server", metavar="NAME", help="server name in the settings")
    group.add_argument("--host", help="host name or address of a server not saved")
    group.add_argument("--port", type=int, help="DICOM port of that server")
    group.add_argument("--called-aet", metavar="AET", help="AE title of that server")
    group.add_argument(
        "--calling-aet",
        metavar="AET",
        help="this application's AE title (default: the one in the settings)",
    )


def settings_from_args(args) -> Settings:
    return load_settings(args.settings)


def server_from_args(args, settings: Settings) -> Server:
    """Return the server named by ``--server`` or described by ``--host`` etc."""
    if args.server:
        if args.host or args.port or args.called_aet:
            raise SettingsError(
                "Give either --server or --host, --port and --called-aet, not both."
            )
        return settings.server(args.server)
    missing = [
        option
        for option, value in (
            ("--host", args.host),
            ("--port", args.port),
            ("--called-aet", args.called_aet),
        )
        if not value
    ]
    if missing:
        raise SettingsError(
            f"Missing {', '.join(missing)}: name a saved server with --server, or "
            "give --host, --port and --called-aet."
        )
    try:
        host = validate_host(args.host)
        port = validate_port(args.port)
        called_aet = validate_ae_title(args.called_aet)
    except ValueError as exc:
        raise SettingsError(f"Invalid server option: {exc}")
    return Server(
        name=f"{called_aet}@{host}:{port}", host=host, port=port, called_aet=called_aet
    )


def calling_aet_from_args(args, settings: Settings) -> str:
    if not args.calling_aet:
        return settings.ae_title
    try:
        return validate_ae_title(args.calling_aet)
    except ValueError as exc:
        raise SettingsError(f"Invalid --calling-aet: {exc}")


def run_echo(args) -> int:
    settings = settings_from_args(args)
    server = server_from_args(args, settings)
    result = echo(server, calling_aet_from_args(args, settings), settings.timeouts)
    if result.ok:
        print(f"C-ECHO to {server.describe()} succeeded in {result.seconds:.3f} s")
        return EXIT_OK
    print(f"C-ECHO to {server.describe()} failed: {result.reason}", file=sys.stderr)
    return EXIT_ERROR


def run_send(args) -> int:
    settings = settings_from_args(args)
    server = server_from_args(args, settings)
    calling_aet = calling_aet_from_args(args, settings)
    if args.dicomweb and not server.dicomweb_url:
        raise SettingsError(
            f"The server {server.name!r} has no DICOMweb URL. Set one with "
            f"'media2dicom servers edit {server.name} --dicomweb-url URL', or send "
            "without --dicomweb."
        )
    results = send_through_outbox(
        settings,
        server,
        collect_files(args.paths),
        calling_aet,
        allow_uncompressed_fallback=args.uncompressed_fallback,
        transport="dicomweb" if args.dicomweb else "dimse",
    )
    return print_results(results)


def send_through_outbox(
    settings: Settings,
    server: Server,
    files,
    calling_aet: str,
    allow_uncompressed_fallback: bool = True,
    transport: str = "dimse",
) -> list:
    """Warn about large files, then send them through the outbox."""
    for path in files:
        warning = settings.check_upload_size(path)
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
    return Outbox(settings.cache_path()).send_files(
        server,
        files,
        calling_aet=calling_aet,
        timeouts=settings.timeouts,
        progress=TerminalProgress(),
        allow_uncompressed_fallback=allow_uncompressed_fallback,
        transport=transport,
    )


def print_results(results) -> int:
    """Print one line per StoreResult; return EXIT_NOT_SENT if any was not stored."""
    for result in results:
        print(f"{result.category}: {result.path} ({result.sop_instance_uid})")
        print(f"  {result.message}")
    stored = sum(1 for result in results if result.stored)
    print(f"{stored} of {len(results)} object(s) stored.")
    return EXIT_OK if stored == len(results) else EXIT_NOT_SENT
