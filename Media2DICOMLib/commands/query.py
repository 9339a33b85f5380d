"""``media2dicom query`` and ``media2dicom retrieve``: source metadata from a PACS."""

from __future__ import annotations

from pathlib import Path

from Media2DICOMLib.cli import EXIT_OK
from Media2DICOMLib.commands.network import (
    add_server_arguments,
    add_settings_argument,
    calling_aet_from_args,
    server_from_args,
    settings_from_args,
)
from Media2DICOMLib.new_series import save_dataset
from Media2DICOMLib.query import LEVELS, find, retrieve_source_series


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "query",
        help="find patients, studies, series or images on a server (C-FIND)",
        description=(
            "Query a server with C-FIND, or with QIDO-RS when --dicomweb is given, "
            "and print one line per match."
        ),
    )
    add_settings_argument(parser)
    add_server_arguments(parser)
    parser.add_argument(
        "--level",
        choices=[level.lower() for level in LEVELS],
        default="study",
        help="query level (default: study)",
    )
    parser.add_argument("--patient-name", help="patient name; * and ? are wildcards")
    parser.add_argument("--patient-id", help="Patient ID; * and ? are wildcards")
    parser.add_argument(
        "--accession-number", help="Accession Number; * and ? are wildcards"
    )
    parser.add_argument(
        "--study-date",
        metavar="RANGE",
        help="YYYYMMDD, or a range YYYYMMDD-YYYYMMDD with either end open",
    )
    parser.add_argument("--modality", help="e.g. CT or MR")
    parser.add_argument(
        "--study-uid", help="Study Instance UID (series level needs it)"
    )
    parser.add_argument(
        "--series-uid", help="Series Instance UID (image level needs it)"
    )
    parser.add_argument(
        "--dicomweb", action="store_true", help="query with QIDO-RS instead of C-FIND"
    )
    parser.set_defaults(handler=run_query)

    parser = subparsers.add_parser(
        "retrieve",
        help="retrieve the source metadata of one series (C-GET or C-MOVE)",
        description=(
            "List the instances of a series with C-FIND and fetch the header of "
            "one of them, by C-GET or by C-MOVE to a storage SCP that listens on "
            "this application's port during the retrieval."
        ),
    )
    add_settings_argument(parser)
    add_server_arguments(parser)
    parser.add_argument("--study-uid", required=True, help="Study Instance UID")
    parser.add_argument("--series-uid", required=True, help="Series Instance UID")
    parser.add_argument(
        "--method",
        choices=("get", "move"),
        default="get",
        help="C-GET needs no inbound port; C-MOVE needs the server to know this "
        "application's AE title, host and port (default: get)",
    )
    parser.add_argument(
        "--bind-address",
        default="",
        help="address the C-MOVE storage SCP listens on (default: all)",
    )
    parser.add_argument(
        "--save-header",
        metavar="DIR",
        help="write the retrieved header, without pixel data, into this folder",
    )
    parser.set_defaults(handler=run_retrieve)


def run_query(args) -> int:
    settings = settings_from_args(args)
    server = server_from_args(args, settings)
    filters = dict(
        patient_name=args.patient_name,
        patient_id=args.patient_id,
        accession_number=args.accession_number,
        study_date=args.study_date,
        modality=args.modality,
        study_instance_uid=args.study_uid,
        series_instance_uid=args.series_uid,
    )
    if args.dicomweb:
        from Media2DICOMLib.dicomweb import search

        rows = search(server, args.level, settings.timeouts, **filters)
    else:
        rows = find(
            server,
            args.level,
            calling_aet_from_args(args, settings),
            settings.timeouts,
            **filters,
        )
    for row in rows:
        print(row.describe())
    print(f"{len(rows)} match(es) on {server.describe()}.")
    return EXIT_OK


def run_retrieve(args) -> int:
    settings = settings_from_args(args)
    server = server_from_args(args, settings)
    source = retrieve_source_series(
        server,
        args.study_uid,
        args.series_uid,
        method=args.method,
        calling_aet=calling_aet_from_args(args, settings),
        move_port=settings.port,
        bind_address=args.bind_address,
        timeouts=settings.timeouts,
    )
    print(f"Series {source.series_instance_uid} of study {source.study_instance_uid}")
    print(f"  modality {source.modality or '-'}, {len(source.instances)} instance(s)")
    print(f"  Frame of Reference UID {source.frame_of_reference_uid or '-'}")
    if args.save_header:
        folder = Path(args.save_header)
        folder.mkdir(parents=True, exist_ok=True)
        header = source.header
        path = folder / f"{header.SOPInstanceUID}.dcm"
        save_dataset(header, path)
        print(f"  header saved to {path}")
    return EXIT_OK
