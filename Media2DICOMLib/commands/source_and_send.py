"""Options shared by the commands that write objects: the source and ``--send``.

The source series comes from local DICOM files (``--source``) or from a PACS
(``--source-server`` with the study and series UIDs), and ``--send`` stores
what was written on a saved server through the outbox.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from Media2DICOMLib.errors import UsageError

SOURCE_OPTIONS_HELP = (
    "the source series: local files with --source, or a series on a saved "
    "server with --source-server, --study-uid and --series-uid"
)


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options that choose the source series."""
    group = parser.add_argument_group("source", SOURCE_OPTIONS_HELP)
    group.add_argument(
        "-s",
        "--source",
        type=Path,
        action="append",
        help="DICOM file or folder of the source series (folders are searched "
        "recursively); repeatable",
    )
    group.add_argument(
        "--series-uid",
        help="Series Instance UID of the source series: required with "
        "--source-server, and needed with --source when the files hold several",
    )
    group.add_argument(
        "--source-server",
        metavar="NAME",
        help="saved server to retrieve the source metadata from (one header, "
        "no pixel data), instead of --source",
    )
    group.add_argument(
        "--study-uid", help="Study Instance UID of the source series on the server"
    )
    group.add_argument(
        "--retrieve-method",
        choices=("get", "move"),
        default="get",
        help="C-GET (default, no inbound port) or C-MOVE to this application's "
        "AE title and port from the settings",
    )
    group.add_argument(
        "--accession-number",
        help="Accession Number to write in place of the source's",
    )


def add_send_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--send``, which stores the written objects on a saved server."""
    parser.add_argument(
        "--send",
        metavar="NAME",
        help="after writing, send the objects to this saved server through the "
        "outbox (default: write files only)",
    )


def source_from_args(args):
    """Read or retrieve the source series the options name."""
    if args.source and args.source_server:
        raise UsageError(
            "Give either --source (local files) or --source-server, not both."
        )
    if args.source:
        from Media2DICOMLib.source_study import read_source_series

        return read_source_series(
            args.source,
            series_instance_uid=args.series_uid,
            accession_number=args.accession_number,
        )
    if not args.source_server:
        raise UsageError(
            "Missing source: give --source with the DICOM files of the study, or "
            "--source-server with --study-uid and --series-uid."
        )
    if not args.study_uid or not args.series_uid:
        raise UsageError(
            "--source-server needs --study-uid and --series-uid; find them with "
            "'media2dicom query --server NAME --level series'."
        )

    from Media2DICOMLib.query import retrieve_source_series
    from Media2DICOMLib.settings import load_settings

    settings = load_settings(args.settings)
    return retrieve_source_series(
        settings.server(args.source_server),
        args.study_uid,
        args.series_uid,
        method=args.retrieve_method,
        calling_aet=settings.ae_title,
        move_port=settings.port,
        timeouts=settings.timeouts,
        accession_number=args.accession_number,
    )


def check_send_target(args) -> None:
    """Fail before any work when ``--send`` names a server that is not saved."""
    if not getattr(args, "send", None):
        return
    from Media2DICOMLib.settings import load_settings

    load_settings(args.settings).server(args.send)


def send_if_requested(args, paths) -> int:
    """Send ``paths`` to the ``--send`` server; return the command's exit code."""
    if not getattr(args, "send", None):
        return 0
    from Media2DICOMLib.commands.network import print_results, send_through_outbox
    from Media2DICOMLib.settings import load_settings

    settings = load_settings(args.settings)
    server = settings.server(args.send)
    files = [Path(p) for p in paths]
    results = send_through_outbox(settings, server, files, settings.ae_title)
    return print_results(results)


def warn_if_output_not_empty(folder: Path) -> None:
    """Warn that DICOM files from an earlier run are in the output folder.

    Sending the folder would send those too, as separate series.
    """
    earlier = list(Path(folder).glob("*.dcm")) if Path(folder).is_dir() else []
    if earlier:
        print(
            f"warning: {folder} already contains {len(earlier)} DICOM file(s) from "
            "an earlier run; new files get new names, but sending the whole folder "
            "sends the earlier ones too. Use a new --output folder to keep runs "
            "apart.",
            file=sys.stderr,
        )


def add_settings_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--settings``, which both the PACS source and ``--send`` read."""
    parser.add_argument(
        "--settings",
        metavar="FILE",
        help="settings file with the saved servers (default: "
        "$MEDIA2DICOM_SETTINGS, else the user's configuration folder)",
    )
