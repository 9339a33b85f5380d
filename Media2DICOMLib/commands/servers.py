"""``media2dicom servers list|add|edit|remove|echo``: the saved server list.

Adding or editing a server runs C-ECHO and prints the time or the reason it
failed. A server whose echo failed is still saved, marked unverified.
"""

from __future__ import annotations

import argparse
import sys

from Media2DICOMLib.cli import EXIT_ERROR, EXIT_OK
from Media2DICOMLib.commands.network import add_settings_argument
from Media2DICOMLib.errors import SettingsError
from Media2DICOMLib.network import echo
from Media2DICOMLib.settings import (
    DICOMWEB_AUTH_METHODS,
    Server,
    TLSOptions,
    copy_server,
    load_settings,
    save_settings,
)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "servers", help="list, add, edit, remove or echo saved servers"
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    listing = actions.add_parser("list", help="list the saved servers")
    add_settings_argument(listing)
    listing.set_defaults(handler=run_list)

    add = actions.add_parser("add", help="add a server and check it with C-ECHO")
    add_settings_argument(add)
    add.add_argument("name", help="a name for the server, unique in the list")
    _add_server_options(add, required=True)
    add.set_defaults(handler=run_add)

    edit = actions.add_parser("edit", help="change a server and check it again")
    add_settings_argument(edit)
    edit.add_argument("name", help="the server to change")
    edit.add_argument("--rename", metavar="NEW_NAME", help="new name of the server")
    _add_server_options(edit, required=False)
    edit.set_defaults(handler=run_edit)

    remove = actions.add_parser("remove", help="remove a server from the list")
    add_settings_argument(remove)
    remove.add_argument("name")
    remove.set_defaults(handler=run_remove)

    local = actions.add_parser(
        "local",
        help="show or set this application's AE title, port, cache and size warning",
    )
    add_settings_argument(local)
    local.add_argument("--ae-title", help="this application's AE title")
    local.add_argument(
        "--port", type=int, help="port of the C-MOVE storage SCP (the move destination)"
    )
    local.add_argument("--cache-directory", metavar="DIR", help="outbox and cache")
    local.add_argument(
        "--upload-warning-mb",
        type=int,
        metavar="MB",
        help="warn before sending objects larger than this many megabytes",
    )
    local.set_defaults(handler=run_local)

    check = actions.add_parser("echo", help="check saved servers with C-ECHO")
    add_settings_argument(check)
    check.add_argument("names", nargs="*", help="servers to check (default: all)")
    check.set_defaults(handler=run_echo)


def _add_server_options(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("--host", required=required, help="host name or address")
    parser.add_argument("--port", type=int, required=required, help="DICOM port")
    parser.add_argument(
        "--called-aet", metavar="AET", required=required, help="the server's AE title"
    )
    parser.add_argument("--description", help="free text shown in the list")
    parser.add_argument(
        "--tls-ca",
        metavar="FILE",
        help="CA certificate (PEM) that signed the server's certificate; the "
        "server is verified against it",
    )
    parser.add_argument("--tls-cert", metavar="FILE", help="client certificate (PEM)")
    parser.add_argument("--tls-key", metavar="FILE", help="client private key (PEM)")
    parser.add_argument(
        "--tls-no-verify",
        action="store_true",
        help="use TLS without checking the server certificate (insecure)",
    )
    parser.add_argument(
        "--no-tls", action="store_true", help="remove the TLS settings (edit only)"
    )
    parser.add_argument("--dicomweb-url", metavar="URL", help="DICOMweb base URL")
    parser.add_argument(
        "--dicomweb-auth",
        choices=DICOMWEB_AUTH_METHODS,
        help="DICOMweb authentication method",
    )
    parser.add_argument(
        "--dicomweb-username", metavar="USER", help="user name for basic authentication"
    )
    parser.add_argument(
        "--dicomweb-secret-env",
        metavar="VARIABLE",
        help="environment variable that contains the DICOMweb password or token",
    )
    parser.add_argument(
        "--no-echo", action="store_true", help="save without checking with C-ECHO"
    )


def _tls_from_args(args, current):
    if getattr(args, "no_tls", False):
        return None
    given = args.tls_ca or args.tls_cert or args.tls_key or args.tls_no_verify
    if not given:
        return current
    options = TLSOptions(**vars(current)) if current else TLSOptions()
    if args.tls_ca:
        options.ca_file = args.tls_ca
    if args.tls_cert:
        options.cert_file = args.tls_cert
    if args.tls_key:
        options.key_file = args.tls_key
    if args.tls_no_verify:
        options.verify = False
    return options


def _changes_from_args(args, current=None) -> dict:
    changes = {}
    for option, name in (
        ("host", "host"),
        ("port", "port"),
        ("called_aet", "called_aet"),
        ("description", "description"),
        ("dicomweb_url", "dicomweb_url"),
        ("dicomweb_auth", "dicomweb_auth"),
        ("dicomweb_username", "dicomweb_username"),
        ("dicomweb_secret_env", "dicomweb_secret_env"),
    ):
        value = getattr(args, option)
        if value is not None:
            changes[name] = value
    changes["tls"] = _tls_from_args(args, current.tls if current else None)
    return changes


def _verify(server: Server, settings, args) -> Server:
    if args.no_echo:
        print(f"Not checked with C-ECHO: {server.name} is saved as unverified.")
        return copy_server(server, verified=False)
    result = echo(server, settings.ae_title, settings.timeouts)
    if result.ok:
        print(f"C-ECHO to {server.describe()} succeeded in {result.seconds:.3f} s.")
    else:
        print(
            f"C-ECHO to {server.describe()} failed: {result.reason}\n"
            f"{server.name} is saved as unverified.",
            file=sys.stderr,
        )
    return copy_server(server, verified=result.ok)


def _verify_and_save(server: Server, settings, args) -> int:
    """Echo the validated ``server`` already in ``settings``, then save them."""
    settings.replace_server(server.name, _verify(server, settings, args))
    path = save_settings(settings, args.settings)
    print(f"Saved {server.name} to {path}.")
    return EXIT_OK


def run_list(args) -> int:
    settings = load_settings(args.settings)
    print(f"This application: AE title {settings.ae_title}, port {settings.port}")
    if not settings.servers:
        print("No servers saved. Add one with 'media2dicom servers add'.")
    for server in settings.servers:
        state = "verified" if server.verified else "unverified"
        print(f"{server.name}: {server.describe()}, {state}")
        if server.description:
            print(f"  {server.description}")
        if server.dicomweb_url:
            print(f"  DICOMweb: {server.dicomweb_url} ({server.dicomweb_auth})")
    return EXIT_OK


def run_add(args) -> int:
    settings = load_settings(args.settings)
    server = Server(
        name=args.name, host=args.host, port=args.port, called_aet=args.called_aet
    )
    server = copy_server(server, **_changes_from_args(args))
    settings.add_server(server)
    return _verify_and_save(server, settings, args)


def run_edit(args) -> int:
    settings = load_settings(args.settings)
    current = settings.server(args.name)
    server = copy_server(current, **_changes_from_args(args, current))
    if args.rename:
        server = copy_server(server, name=args.rename)
    settings.replace_server(args.name, server)
    return _verify_and_save(server, settings, args)


def run_remove(args) -> int:
    settings = load_settings(args.settings)
    server = settings.remove_server(args.name)
    path = save_settings(settings, args.settings)
    print(f"Removed {server.name} from {path}.")
    return EXIT_OK


def run_local(args) -> int:
    settings = load_settings(args.settings)
    changed = False
    for option in ("ae_title", "port", "cache_directory", "upload_warning_mb"):
        value = getattr(args, option)
        if value is not None:
            setattr(settings, option, value)
            changed = True
    if changed:
        path = save_settings(settings, args.settings)
        print(f"Saved to {path}.")
    print(f"AE title: {settings.ae_title}")
    print(f"Port (C-MOVE destination): {settings.port}")
    print(f"Cache directory: {settings.cache_path()}")
    print(f"Upload-size warning: {settings.upload_warning_mb} MB")
    print(f"Upload limit: {settings.upload_limit_mb} MB (fixed)")
    return EXIT_OK


def run_echo(args) -> int:
    settings = load_settings(args.settings)
    names = args.names or [server.name for server in settings.servers]
    if not names:
        raise SettingsError("No servers saved. Add one with 'media2dicom servers add'.")
    failed = 0
    for name in names:
        server = settings.server(name)
        result = echo(server, settings.ae_title, settings.timeouts)
        if result.ok:
            print(f"{name}: C-ECHO succeeded in {result.seconds:.3f} s")
        else:
            failed += 1
            print(f"{name}: C-ECHO failed: {result.reason}")
    return EXIT_OK if failed == 0 else EXIT_ERROR
