"""Settings file: this application's AE title, the server list, cache and limits.

The settings are one JSON file in the user's configuration folder (see
:func:`default_settings_path`). Every value is validated on load and on edit:
an invalid file raises :class:`SettingsError` naming the line and field, and
is never replaced by defaults. Writes go to a temporary file in the same
folder that then replaces the old file, so a crash leaves either the old or
the new settings.

Secrets are never written to the file: a server that needs a DICOMweb password
or token names the environment variable that contains it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import sys
import tempfile
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Optional, Union

from Media2DICOMLib.errors import ObjectTooLargeError, SettingsError

LOGGER = logging.getLogger(__name__)

SETTINGS_ENVIRONMENT_VARIABLE = "MEDIA2DICOM_SETTINGS"
SETTINGS_FILE_NAME = "settings.json"
DEFAULT_AE_TITLE = "MEDIA2DICOM"
DEFAULT_PORT = 11112
DEFAULT_UPLOAD_WARNING_MB = 256
# Fixed: not a preference, so the file may only repeat this value.
UPLOAD_LIMIT_MB = 4000
DICOMWEB_AUTH_METHODS = ("none", "basic", "token")
MEGABYTE = 1_000_000

PathLike = Union[str, os.PathLike]


@dataclass
class TLSOptions:
    """DICOM TLS settings of one server.

    The server certificate is verified against ``ca_file`` unless ``verify``
    is False. ``cert_file`` and ``key_file`` give an optional client
    certificate for servers that require one. ``server_hostname`` overrides
    the name checked against the certificate (default: the server's host).
    """

    ca_file: Optional[str] = None
    cert_file: Optional[str] = None
    key_file: Optional[str] = None
    verify: bool = True
    server_hostname: Optional[str] = None


@dataclass
class Timeouts:
    """Time limits of one association, in seconds.

    ``connect`` bounds the TCP connection (and TLS handshake), ``acse`` the
    wait for the association response and release, ``dimse`` the wait for each
    DIMSE response, and ``network`` the silence allowed on an open connection.
    """

    connect: float = 10.0
    acse: float = 30.0
    dimse: float = 120.0
    network: float = 120.0


@dataclass
class Server:
    """A PACS or DICOMweb server from the server list.

    ``verified`` records whether the last C-ECHO at add or edit succeeded.
    DICOMweb authentication uses ``dicomweb_auth`` ("none", "basic" or
    "token"); the password or token is read from the environment variable
    named by ``dicomweb_secret_env``.
    """

    name: str
    host: str
    port: int
    called_aet: str
    description: str = ""
    tls: Optional[TLSOptions] = None
    dicomweb_url: Optional[str] = None
    dicomweb_auth: str = "none"
    dicomweb_username: Optional[str] = None
    dicomweb_secret_env: Optional[str] = None
    verified: bool = False

    def describe(self) -> str:
        """Return "AET at host:port", the way every message names a server."""
        transport = " (TLS)" if self.tls else ""
        return f"{self.called_aet} at {self.host}:{self.port}{transport}"


@dataclass
class Settings:
    """Everything the settings file contains."""

    ae_title: str = DEFAULT_AE_TITLE
    port: int = DEFAULT_PORT
    servers: list = field(default_factory=list)
    cache_directory: Optional[str] = None
    upload_warning_mb: int = DEFAULT_UPLOAD_WARNING_MB
    timeouts: Timeouts = field(default_factory=Timeouts)

    @property
    def upload_limit_mb(self) -> int:
        return UPLOAD_LIMIT_MB

    def cache_path(self) -> Path:
        """Return the cache directory, the platform default when unset."""
        if self.cache_directory:
            return Path(self.cache_directory).expanduser()
        return default_cache_directory()

    def check_upload_size(self, path: PathLike) -> Optional[str]:
        """Return a warning when ``path`` exceeds the upload-size warning.

        Raises
        ------
        ObjectTooLargeError
            When the file exceeds the fixed upload limit.
        """
        size = Path(path).stat().st_size
        megabytes = size / MEGABYTE
        if megabytes > UPLOAD_LIMIT_MB:
            raise ObjectTooLargeError(
                f"{path} is {megabytes:.0f} MB, more than the upload limit of "
                f"{UPLOAD_LIMIT_MB} MB, so it is not sent. Split the export into "
                "smaller objects (fewer frames or a lower resolution)."
            )
        if megabytes > self.upload_warning_mb:
            return (
                f"{path} is {megabytes:.0f} MB, more than the upload-size warning "
                f"of {self.upload_warning_mb} MB; some PACS reject objects this large."
            )
        return None

    def server(self, name: str) -> Server:
        """Return the server called ``name``.

        Raises
        ------
        SettingsError
            When no server has that name; the message lists the known names.
        """
        for server in self.servers:
            if server.name == name:
                return server
        known = ", ".join(s.name for s in self.servers) or "none"
        raise SettingsError(
            f"No server is called {name!r} in the settings (known: {known}). "
            "Add it with 'media2dicom servers add'."
        )

    def add_server(self, server: Server) -> None:
        """Validate ``server`` and append it; names must be unique."""
        validate_server(server)
        if any(s.name == server.name for s in self.servers):
            raise SettingsError(
                f"A server called {server.name!r} already exists. Edit it or choose "
                "another name."
            )
        self.servers.append(server)

    def replace_server(self, name: str, server: Server) -> None:
        """Validate ``server`` and put it in place of the server called ``name``."""
        validate_server(server)
        index = self.servers.index(self.server(name))
        if server.name != name and any(s.name == server.name for s in self.servers):
            raise SettingsError(
                f"Cannot rename {name!r} to {server.name!r}: that name is taken."
            )
        self.servers[index] = server

    def remove_server(self, name: str) -> Server:
        server = self.server(name)
        self.servers.remove(server)
        return server


def default_settings_path() -> Path:
    """Return the settings file location.

    ``MEDIA2DICOM_SETTINGS`` wins when set. Otherwise the platform convention
    applies: ``%APPDATA%\\Media2DICOM`` on Windows, ``~/Library/Application
    Support/Media2DICOM`` on macOS, ``$XDG_CONFIG_HOME/media2dicom`` (default
    ``~/.config``) elsewhere.
    """
    override = os.environ.get(SETTINGS_ENVIRONMENT_VARIABLE)
    if override:
        return Path(override).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming")
        return base / "Media2DICOM" / SETTINGS_FILE_NAME
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
        return base / "Media2DICOM" / SETTINGS_FILE_NAME
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "media2dicom" / SETTINGS_FILE_NAME


def default_cache_directory() -> Path:
    """Return the default cache directory in the user's application data folder.

    The outbox lives there and must survive reboots, so Linux uses
    ``$XDG_DATA_HOME`` (default ``~/.local/share``) rather than the cache
    folder, which cleaners may empty.
    """
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
        return base / "Media2DICOM" / "cache"
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
        return base / "Media2DICOM" / "cache"
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "media2dicom" / "cache"


def load_settings(path: Optional[PathLike] = None) -> Settings:
    """Read and validate the settings file.

    A missing file gives the defaults (nothing is written). ``path``
    overrides :func:`default_settings_path`, as Slicer does.

    Raises
    ------
    SettingsError
        When the file is not valid JSON or a value is invalid; the message
        names the file, line and field.
    """
    path = Path(path) if path is not None else default_settings_path()
    if not path.exists():
        LOGGER.info("No settings file at %s: using defaults", path)
        return Settings()
    try:
        # utf-8-sig also reads files that Windows editors saved with a byte
        # order mark.
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"Failed to read the settings file {path}: {exc}")
    try:
        data = json.loads(text)
    except RecursionError:
        raise SettingsError(
            f"The settings file {path} nests lists or objects too deeply to be "
            "settings. Fix or remove the file."
        )
    except ValueError as exc:
        if not isinstance(exc, json.JSONDecodeError):
            # Python rejects integers of more than 4300 digits this way.
            raise SettingsError(
                f"The settings file {path} has an invalid value ({exc}). Fix or "
                "remove the file."
            )
        raise SettingsError(
            f"The settings file {path} is not valid JSON at line {exc.lineno}, "
            f"column {exc.colno}: {exc.msg}. Fix or remove the file."
        )
    try:
        settings = settings_from_dict(data)
    except _FieldError as exc:
        line = _line_of_field(_locate_lines(text), exc.field_path)
        where = f"line {line}, " if line else ""
        raise SettingsError(
            f"Invalid settings file {path} ({where}field {_path_name(exc.field_path)}): "
            f"{exc.message} Fix the value or remove the file."
        )
    _warn_unresolved_hosts(settings, path, text)
    return settings


def _warn_unresolved_hosts(settings: Settings, path: Path, text: str) -> None:
    """Log each saved server whose host name the local resolver cannot find."""
    for index, server in enumerate(settings.servers):
        try:
            validate_host(server.host)
        except ValueError as exc:
            field_path = ("servers", index, "host")
            line = _line_of_field(_locate_lines(text), field_path)
            where = f"line {line}, " if line else ""
            LOGGER.warning(
                "Settings file %s (%sfield %s): %s Server %r stays in the list, but "
                "echo and send to it fail until the name resolves.",
                path,
                where,
                _path_name(field_path),
                exc,
                server.name,
            )


def save_settings(settings: Settings, path: Optional[PathLike] = None) -> Path:
    """Validate ``settings`` and write them atomically; return the file path."""
    path = Path(path) if path is not None else default_settings_path()
    try:
        settings_from_dict(settings_to_dict(settings))
    except _FieldError as exc:
        raise SettingsError(
            f"Not saved to {path}: field {_path_name(exc.field_path)}: {exc.message}"
        )
    text = json.dumps(settings_to_dict(settings), indent=2, ensure_ascii=False) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(path, text)
    except OSError as exc:
        raise SettingsError(f"Failed to write the settings file {path}: {exc}")
    LOGGER.info("Saved settings to %s", path)
    return path


def write_text_atomically(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then replace ``path``.

    Readers see the old or the new content, never a partial file. Raises
    OSError when the folder is not writable.
    """
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except OSError:
        Path(temporary).unlink(missing_ok=True)
        raise


def settings_to_dict(settings: Settings) -> dict:
    data = {
        "ae_title": settings.ae_title,
        "port": settings.port,
        "cache_directory": settings.cache_directory,
        "upload_warning_mb": settings.upload_warning_mb,
        "upload_limit_mb": UPLOAD_LIMIT_MB,
        "timeouts": asdict(settings.timeouts),
        "servers": [asdict(server) for server in settings.servers],
    }
    return data


def settings_from_dict(data: Any) -> Settings:
    """Build :class:`Settings` from parsed JSON, validating every field."""
    _expect_type(data, dict, ())
    _reject_unknown(data, {f.name for f in fields(Settings)} | {"upload_limit_mb"}, ())
    settings = Settings()

    if "ae_title" in data:
        settings.ae_title = _checked(validate_ae_title, data["ae_title"], ("ae_title",))
    if "port" in data:
        settings.port = _checked(validate_port, data["port"], ("port",))
    if data.get("cache_directory") is not None:
        _expect_type(data["cache_directory"], str, ("cache_directory",))
        settings.cache_directory = data["cache_directory"]
    if "timeouts" in data:
        settings.timeouts = _timeouts_from_dict(data["timeouts"], ("timeouts",))
    _read_upload_sizes(data, settings)

    servers = data.get("servers", [])
    _expect_type(servers, list, ("servers",))
    names = set()
    for index, item in enumerate(servers):
        # Host names are resolved by load_settings, which only warns, so a
        # laptop away from the hospital network can still read its settings.
        server = _server_from_dict(item, ("servers", index), resolve_host=False)
        if server.name in names:
            raise _FieldError(
                ("servers", index, "name"),
                f"the server name {server.name!r} appears twice.",
            )
        names.add(server.name)
        settings.servers.append(server)
    return settings


def _read_upload_sizes(data: dict, settings: Settings) -> None:
    if "upload_warning_mb" in data:
        value = data["upload_warning_mb"]
        _expect_type(value, int, ("upload_warning_mb",))
        if not 1 <= value <= UPLOAD_LIMIT_MB:
            raise _FieldError(
                ("upload_warning_mb",),
                f"{value} MB is outside 1 to {UPLOAD_LIMIT_MB} MB.",
            )
        settings.upload_warning_mb = value
    if "upload_limit_mb" in data and data["upload_limit_mb"] != UPLOAD_LIMIT_MB:
        raise _FieldError(
            ("upload_limit_mb",),
            f"the upload limit is fixed at {UPLOAD_LIMIT_MB} MB, not "
            f"{data['upload_limit_mb']!r}.",
        )


def validate_ae_title(value: Any) -> str:
    """Return ``value`` stripped when it is a valid AE title, else raise.

    An AE title has 1 to 16 characters of the default repertoire with no
    backslash and no control characters (DICOM PS3.5, value representation AE).
    """
    if not isinstance(value, str):
        raise ValueError(f"the AE title must be text, not {value!r}.")
    stripped = value.strip(" ")
    if not stripped:
        raise ValueError("the AE title is empty.")
    if len(stripped) > 16:
        raise ValueError(f"the AE title {value!r} is longer than 16 characters.")
    if "\\" in stripped:
        raise ValueError(f"the AE title {value!r} contains a backslash.")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in stripped):
        raise ValueError(f"the AE title {value!r} contains a control character.")
    if not stripped.isascii():
        raise ValueError(f"the AE title {value!r} contains non-ASCII characters.")
    return stripped


def validate_port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"the port must be a whole number, not {value!r}.")
    if not 1 <= value <= 65535:
        raise ValueError(f"the port {value} is outside 1 to 65535.")
    return value


def validate_host(value: Any, resolve: bool = True) -> str:
    """Return ``value`` when it is a host name or address.

    With ``resolve`` the local resolver must also find an address for it.
    """
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"the host must be a name or address, not {value!r}.")
    host = value.strip()
    if any(character.isspace() for character in host):
        raise ValueError(f"the host {host!r} contains white space.")
    if not resolve:
        return host
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ValueError(f"the host {host!r} does not resolve ({exc}).")
    return host


def validate_server(server: Server) -> None:
    """Raise :class:`SettingsError` when a field of ``server`` is invalid."""
    try:
        _server_from_dict(asdict(server), ())
    except _FieldError as exc:
        raise SettingsError(
            f"Invalid server {server.name!r}: field {_path_name(exc.field_path)}: "
            f"{exc.message}"
        )


class _FieldError(Exception):
    def __init__(self, field_path: tuple, message: str) -> None:
        super().__init__(message)
        self.field_path = field_path
        self.message = message[:1].upper() + message[1:]


def _checked(validator, value, field_path: tuple):
    try:
        return validator(value)
    except ValueError as exc:
        raise _FieldError(field_path, str(exc))


def _expect_type(value, expected: type, field_path: tuple) -> None:
    wrong_bool = isinstance(value, bool) and expected is not bool
    if wrong_bool or not isinstance(value, expected):
        names = {dict: "an object", list: "a list", str: "text", int: "a whole number"}
        raise _FieldError(
            field_path,
            f"expected {names.get(expected, expected.__name__)}, " f"found {value!r}.",
        )


def _reject_unknown(data: dict, known: set, field_path: tuple) -> None:
    for key in data:
        if key not in known:
            raise _FieldError(
                field_path + (key,),
                f"unknown field {key!r} (known: {', '.join(sorted(known))}).",
            )


def _timeouts_from_dict(data, field_path: tuple) -> Timeouts:
    _expect_type(data, dict, field_path)
    _reject_unknown(data, {f.name for f in fields(Timeouts)}, field_path)
    timeouts = Timeouts()
    for name, value in data.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _FieldError(
                field_path + (name,), f"expected seconds, found {value!r}."
            )
        if not math.isfinite(value) or value <= 0:
            raise _FieldError(
                field_path + (name,),
                f"{value} s is not a positive, finite number of seconds.",
            )
        setattr(timeouts, name, float(value))
    return timeouts


def _tls_from_dict(data, field_path: tuple) -> Optional[TLSOptions]:
    if data is None:
        return None
    _expect_type(data, dict, field_path)
    _reject_unknown(data, {f.name for f in fields(TLSOptions)}, field_path)
    options = TLSOptions(**data)
    if not isinstance(options.verify, bool):
        raise _FieldError(field_path + ("verify",), "expected true or false.")
    for name in ("ca_file", "cert_file", "key_file"):
        value = getattr(options, name)
        if value is None:
            continue
        _expect_type(value, str, field_path + (name,))
        if not Path(value).expanduser().is_file():
            raise _FieldError(field_path + (name,), f"the file {value} does not exist.")
    if options.verify and not options.ca_file:
        raise _FieldError(
            field_path + ("ca_file",),
            "a CA certificate file is required to verify the server; give one, "
            "or set verify to false to accept any certificate.",
        )
    if bool(options.cert_file) != bool(options.key_file):
        raise _FieldError(
            field_path + ("key_file" if options.cert_file else "cert_file",),
            "a client certificate needs both cert_file and key_file.",
        )
    return options


def _server_from_dict(data, field_path: tuple, resolve_host: bool = True) -> Server:
    _expect_type(data, dict, field_path)
    _reject_unknown(data, {f.name for f in fields(Server)}, field_path)
    for required in ("name", "host", "port", "called_aet"):
        if required not in data:
            raise _FieldError(field_path + (required,), "this field is missing.")
    _expect_type(data["name"], str, field_path + ("name",))
    if not data["name"].strip():
        raise _FieldError(field_path + ("name",), "the server name is empty.")

    server = Server(
        name=data["name"].strip(),
        host=_checked(
            lambda value: validate_host(value, resolve=resolve_host),
            data["host"],
            field_path + ("host",),
        ),
        port=_checked(validate_port, data["port"], field_path + ("port",)),
        called_aet=_checked(
            validate_ae_title, data["called_aet"], field_path + ("called_aet",)
        ),
    )
    description = data.get("description")
    if description is not None:
        _expect_type(description, str, field_path + ("description",))
        server.description = description
    verified = data.get("verified", False)
    _expect_type(verified, bool, field_path + ("verified",))
    server.verified = verified

    _read_dicomweb_fields(data, server, field_path)
    server.tls = _tls_from_dict(data.get("tls"), field_path + ("tls",))
    return server


def _read_dicomweb_fields(data: dict, server: Server, field_path: tuple) -> None:
    for name in ("dicomweb_url", "dicomweb_username", "dicomweb_secret_env"):
        value = data.get(name)
        if value is not None:
            _expect_type(value, str, field_path + (name,))
            setattr(server, name, value)
    url = server.dicomweb_url
    if url is not None and not url.startswith(("http://", "https://")):
        raise _FieldError(
            field_path + ("dicomweb_url",),
            f"the DICOMweb URL {url!r} must start with http:// or https://.",
        )

    auth = data.get("dicomweb_auth", "none")
    if auth not in DICOMWEB_AUTH_METHODS:
        raise _FieldError(
            field_path + ("dicomweb_auth",),
            f"{auth!r} is not one of {', '.join(DICOMWEB_AUTH_METHODS)}.",
        )
    server.dicomweb_auth = auth
    if auth != "none" and not server.dicomweb_secret_env:
        raise _FieldError(
            field_path + ("dicomweb_secret_env",),
            f"{auth} authentication needs the name of the environment variable "
            "that contains the secret.",
        )
    if auth == "basic" and not server.dicomweb_username:
        raise _FieldError(
            field_path + ("dicomweb_username",),
            "basic authentication needs a user name.",
        )


def _path_name(field_path: tuple) -> str:
    text = ""
    for part in field_path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif text:
            text += f".{part}"
        else:
            text = part
    return text or "(top level)"


def _line_of_field(lines: dict, field_path: tuple) -> Optional[int]:
    # A missing field has no line of its own, so report its parent's line.
    while field_path:
        if field_path in lines:
            return lines[field_path]
        field_path = field_path[:-1]
    return None


def _locate_lines(text: str) -> dict:
    """Map each key path of a JSON document to the line its key is on.

    Array items map to the line where the item starts. The document is
    already known to be valid JSON, so this walk does no error handling.
    """
    decoder = json.JSONDecoder()
    lines = {}

    def line_of(index: int) -> int:
        return text.count("\n", 0, index) + 1

    def skip(index: int) -> int:
        while index < len(text) and text[index] in " \t\r\n":
            index += 1
        return index

    def walk(index: int, field_path: tuple) -> int:
        index = skip(index)
        if text[index] == "{":
            index = skip(index + 1)
            while text[index] != "}":
                key, end = json.decoder.scanstring(text, index + 1)
                lines[field_path + (key,)] = line_of(index)
                index = skip(end)  # at the colon
                index = walk(index + 1, field_path + (key,))
                index = skip(index)
                if text[index] == ",":
                    index = skip(index + 1)
            return index + 1
        if text[index] == "[":
            index = skip(index + 1)
            position = 0
            while text[index] != "]":
                lines[field_path + (position,)] = line_of(index)
                index = skip(walk(index, field_path + (position,)))
                if text[index] == ",":
                    index = skip(index + 1)
                position += 1
            return index + 1
        _, end = decoder.raw_decode(text, index)
        return end

    walk(0, ())
    return lines


def copy_server(server: Server, **changes) -> Server:
    """Return a copy of ``server`` with ``changes`` applied."""
    return replace(server, **changes)
