"""``media2dicom outbox list|retry|discard``: objects waiting to be sent."""

from __future__ import annotations

from Media2DICOMLib.cli import EXIT_OK, EXIT_USAGE
from Media2DICOMLib.commands.network import add_settings_argument, print_results
from Media2DICOMLib.errors import UsageError
from Media2DICOMLib.outbox import Outbox
from Media2DICOMLib.progress import TerminalProgress
from Media2DICOMLib.settings import load_settings


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "outbox", help="list, retry or discard objects waiting to be sent"
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    listing = actions.add_parser("list", help="list queued objects")
    _add_selection(listing)
    listing.set_defaults(handler=run_list)

    retry = actions.add_parser(
        "retry",
        help="send queued objects again: one object, one server, or all (default)",
    )
    _add_selection(retry)
    retry.add_argument(
        "--no-uncompressed-fallback",
        dest="uncompressed_fallback",
        action="store_false",
        help="do not rewrite JPEG objects uncompressed for servers that need it",
    )
    retry.set_defaults(handler=run_retry)

    discard = actions.add_parser("discard", help="delete queued objects unsent")
    _add_selection(discard)
    discard.set_defaults(handler=run_discard)


def _add_selection(parser) -> None:
    add_settings_argument(parser)
    parser.add_argument("--server", metavar="NAME", help="only objects for this server")
    parser.add_argument(
        "--uid", metavar="SOP_INSTANCE_UID", help="only this object (SOP Instance UID)"
    )
    parser.add_argument(
        "--all", action="store_true", help="every queued object (retry and discard)"
    )


def _selected(args, require_choice: bool):
    settings = load_settings(args.settings)
    outbox = Outbox(settings.cache_path())
    if require_choice and not (args.server or args.uid or args.all):
        raise UsageError(
            "Choose what to act on: --uid SOP_INSTANCE_UID, --server NAME or --all."
        )
    return settings, outbox, outbox.entries(args.server, args.uid)


def run_list(args) -> int:
    _, outbox, entries = _selected(args, require_choice=False)
    if not entries:
        print(f"The outbox {outbox.folder} is empty.")
        return EXIT_OK
    for entry in entries:
        print(
            f"{entry.sop_instance_uid}  to {entry.server.name} "
            f"({entry.server.describe()})  {entry.size / 1e6:.1f} MB  "
            f"queued {entry.queued_at}, {entry.attempts} attempt(s)"
        )
        if entry.last_attempt:
            print(f"  last attempt {entry.last_attempt}: {entry.last_reason}")
        print(f"  from {entry.source_path}")
    print(f"{len(entries)} object(s) queued in {outbox.folder}.")
    return EXIT_OK


def run_retry(args) -> int:
    settings, outbox, entries = _selected(args, require_choice=False)
    if not entries:
        print("Nothing to retry: no queued object matches.")
        return EXIT_USAGE if (args.uid or args.server) else EXIT_OK
    results = []
    for server_name in sorted({entry.server.name for entry in entries}):
        group = [entry for entry in entries if entry.server.name == server_name]
        # The saved server wins over the copy stored in the queue, so fixing a
        # port or AE title in the settings fixes queued objects too.
        saved = next((s for s in settings.servers if s.name == server_name), None)
        results += outbox.send(
            group,
            calling_aet=settings.ae_title,
            timeouts=settings.timeouts,
            progress=TerminalProgress(),
            allow_uncompressed_fallback=args.uncompressed_fallback,
            server=saved,
        )
    return print_results(results)


def run_discard(args) -> int:
    _, outbox, entries = _selected(args, require_choice=True)
    for entry in entries:
        outbox.remove(entry)
        print(f"Discarded {entry.sop_instance_uid} for {entry.server.name}.")
    print(f"{len(entries)} object(s) discarded.")
    return EXIT_OK
