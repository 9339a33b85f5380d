"""Settings file: location, validation with line numbers, atomic writes, CLI."""

from __future__ import annotations

import json
import logging
import socket
import sys
from pathlib import Path

import pytest

from Media2DICOMLib import settings as settings_module
from Media2DICOMLib.cli import EXIT_ERROR, EXIT_OK, main
from Media2DICOMLib.errors import ObjectTooLargeError, SettingsError
from Media2DICOMLib.settings import (
    Server,
    Settings,
    Timeouts,
    TLSOptions,
    default_cache_directory,
    default_settings_path,
    load_settings,
    save_settings,
    validate_ae_title,
    validate_port,
)
from peers import free_port


@pytest.fixture
def home(tmp_path, monkeypatch):
    """Point every user folder the settings could use at tmp_path."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("APPDATA", str(tmp_path / "appdata"))
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "localappdata"))
    monkeypatch.delenv("MEDIA2DICOM_SETTINGS", raising=False)
    return tmp_path


def orthanc_server(orthanc, name="orthanc") -> Server:
    return Server(
        name=name, host="127.0.0.1", port=orthanc.dicom_port, called_aet=orthanc.aet
    )


def write_settings(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data, indent=2))
    return path


def test_path_linux_uses_xdg(home, monkeypatch):
    """On Linux the settings go under XDG_CONFIG_HOME, the cache under XDG_DATA_HOME."""
    monkeypatch.setattr(sys, "platform", "linux")
    assert default_settings_path() == home / "config" / "media2dicom" / "settings.json"
    assert default_cache_directory() == home / "data" / "media2dicom" / "cache"


def test_path_windows_uses_appdata(home, monkeypatch):
    """On Windows the settings go under APPDATA, the cache under LOCALAPPDATA."""
    monkeypatch.setattr(sys, "platform", "win32")
    assert default_settings_path() == home / "appdata" / "Media2DICOM" / "settings.json"
    assert default_cache_directory() == home / "localappdata" / "Media2DICOM" / "cache"


def test_path_macos_uses_application_support(home, monkeypatch):
    """On macOS both live under ~/Library/Application Support."""
    monkeypatch.setattr(sys, "platform", "darwin")
    support = Path.home() / "Library" / "Application Support" / "Media2DICOM"
    assert default_settings_path() == support / "settings.json"
    assert default_cache_directory() == support / "cache"


def test_path_environment_variable_wins(home, monkeypatch):
    """MEDIA2DICOM_SETTINGS overrides the platform location."""
    monkeypatch.setenv("MEDIA2DICOM_SETTINGS", str(home / "elsewhere.json"))
    assert default_settings_path() == home / "elsewhere.json"


def test_missing_file_gives_defaults(home):
    """A missing settings file gives the defaults and writes nothing."""
    path = home / "absent.json"
    settings = load_settings(path)
    assert settings.ae_title == "MEDIA2DICOM"
    assert settings.port == 11112
    assert settings.servers == []
    assert settings.upload_warning_mb == 256
    assert settings.upload_limit_mb == 4000
    assert settings.cache_path() == default_cache_directory()
    assert not path.exists()


def test_round_trip_keeps_every_field(home):
    """Saved settings load back field by field."""
    ca = home / "ca.pem"
    ca.write_text("placeholder")
    settings = Settings(
        ae_title="MYSTATION",
        port=4100,
        cache_directory=str(home / "cache"),
        upload_warning_mb=512,
        timeouts=Timeouts(connect=3, acse=4, dimse=5, network=6),
    )
    settings.add_server(
        Server(
            name="main",
            host="localhost",
            port=104,
            called_aet="PACS",
            description="Main PACS",
            tls=TLSOptions(ca_file=str(ca)),
            dicomweb_url="https://localhost/dicom-web",
            dicomweb_auth="token",
            dicomweb_secret_env="PACS_TOKEN",
            verified=True,
        )
    )
    path = save_settings(settings, home / "settings.json")
    loaded = load_settings(path)
    assert loaded.ae_title == "MYSTATION"
    assert loaded.port == 4100
    assert loaded.cache_path() == home / "cache"
    assert loaded.upload_warning_mb == 512
    assert loaded.timeouts == Timeouts(connect=3, acse=4, dimse=5, network=6)
    assert loaded.servers == settings.servers
    assert "PACS_TOKEN" in path.read_text()


def test_invalid_json_names_line(home):
    """A syntax error is reported with its line and column."""
    path = home / "settings.json"
    path.write_text('{\n  "ae_title": "A",\n  "port": ,\n}\n')
    with pytest.raises(SettingsError, match=r"line 3, column") as error:
        load_settings(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    "server_changes, field, line_key, message",
    [
        ({"port": 70000}, "servers[0].port", "port", "outside 1 to 65535"),
        ({"port": 0}, "servers[0].port", "port", "outside 1 to 65535"),
        ({"port": "104"}, "servers[0].port", "port", "whole number"),
        (
            {"called_aet": "A" * 17},
            "servers[0].called_aet",
            "called_aet",
            "longer than 16",
        ),
        (
            {"called_aet": "BAD\\AET"},
            "servers[0].called_aet",
            "called_aet",
            "backslash",
        ),
        (
            {"called_aet": "BAD\tAET"},
            "servers[0].called_aet",
            "called_aet",
            "control character",
        ),
        ({"called_aet": "   "}, "servers[0].called_aet", "called_aet", "empty"),
        (
            {"dicomweb_url": "ftp://x"},
            "servers[0].dicomweb_url",
            "dicomweb_url",
            "http://",
        ),
        (
            {"dicomweb_auth": "kerberos"},
            "servers[0].dicomweb_auth",
            "dicomweb_auth",
            "not one of",
        ),
        (
            {"dicomweb_auth": "basic", "dicomweb_secret_env": "PW"},
            "servers[0].dicomweb_username",
            None,
            "user name",
        ),
        ({"colour": "red"}, "servers[0].colour", "colour", "unknown field"),
        ({"tls": {"verify": True}}, "servers[0].tls.ca_file", "tls", "CA certificate"),
    ],
)
def test_invalid_server_field_names_line(
    home, server_changes, field, line_key, message
):
    """An invalid server value is reported with its line and field.

    A missing field has no line, so the error points at its parent object.
    """
    server = {"name": "main", "host": "127.0.0.1", "port": 104, "called_aet": "PACS"}
    server.update(server_changes)
    path = write_settings(
        home / "settings.json", {"ae_title": "ME", "servers": [server]}
    )
    lines = path.read_text().splitlines()
    marker = f'"{line_key}":' if line_key else "{"
    expected_line = next(
        number
        for number, line in enumerate(lines, start=1)
        if number > 3 and line.strip().startswith(marker)
    )
    with pytest.raises(SettingsError) as error:
        load_settings(path)
    text = str(error.value)
    assert f"line {expected_line}," in text
    assert f"field {field}" in text
    assert message.lower() in text.lower()
    assert str(path) in text


def test_missing_server_field_reported(home):
    """A server without a port is reported at the server's line."""
    path = write_settings(
        home / "settings.json",
        {"servers": [{"name": "main", "host": "127.0.0.1", "called_aet": "PACS"}]},
    )
    with pytest.raises(SettingsError, match=r"line 3, field servers\[0\]\.port"):
        load_settings(path)


def test_invalid_own_ae_title_reported(home):
    """This application's AE title is validated too."""
    path = write_settings(home / "settings.json", {"ae_title": "X" * 20})
    with pytest.raises(SettingsError, match=r"line 2, field ae_title"):
        load_settings(path)


def test_upload_limit_is_fixed(home):
    """The upload limit cannot be changed in the file."""
    path = write_settings(home / "settings.json", {"upload_limit_mb": 8000})
    with pytest.raises(SettingsError, match="fixed at 4000 MB"):
        load_settings(path)


def test_duplicate_server_names_rejected(home):
    """Two servers with one name make the file invalid."""
    server = {"name": "main", "host": "127.0.0.1", "port": 104, "called_aet": "PACS"}
    path = write_settings(home / "settings.json", {"servers": [server, server]})
    with pytest.raises(SettingsError, match=r"servers\[1\]\.name.*appears twice"):
        load_settings(path)


def test_unresolvable_host_warned_on_load(home, monkeypatch, caplog):
    """A saved host that does not resolve is reported with its line, not fatal."""

    # The resolver is replaced so the test sends no DNS query anywhere.
    def fail(host, *args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(settings_module.socket, "getaddrinfo", fail)
    server = {"name": "main", "host": "pacs.example", "port": 104, "called_aet": "P"}
    path = write_settings(home / "settings.json", {"servers": [server]})

    with caplog.at_level(logging.WARNING, logger="Media2DICOMLib.settings"):
        settings = load_settings(path)

    assert settings.servers[0].host == "pacs.example"
    warnings = [r.getMessage() for r in caplog.records]
    assert any("servers[0].host" in w and "does not resolve" in w for w in warnings)
    assert any("line " in w for w in warnings)


def test_unresolvable_host_rejected_on_add(monkeypatch):
    """Adding a server whose host does not resolve raises."""

    def fail(host, *args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(settings_module.socket, "getaddrinfo", fail)
    server = settings_module.Server("main", "pacs.example", 104, "PACS")

    with pytest.raises(SettingsError, match="does not resolve"):
        settings_module.validate_server(server)


def test_invalid_file_not_replaced(home):
    """Loading an invalid file leaves it as it was."""
    path = write_settings(home / "settings.json", {"port": -1})
    before = path.read_bytes()
    with pytest.raises(SettingsError):
        load_settings(path)
    assert path.read_bytes() == before


def test_save_is_atomic_and_validated(home):
    """An invalid edit is not written and no temporary file is left behind."""
    path = home / "settings.json"
    save_settings(Settings(ae_title="FIRST"), path)
    before = path.read_bytes()
    with pytest.raises(SettingsError, match="field port"):
        save_settings(Settings(port=99999), path)
    assert path.read_bytes() == before
    save_settings(Settings(ae_title="SECOND"), path)
    assert load_settings(path).ae_title == "SECOND"
    assert sorted(p.name for p in home.iterdir()) == ["settings.json"]


def test_server_list_edits(home):
    """Servers are added, renamed and removed by name, with unique names."""
    settings = Settings()
    settings.add_server(Server("a", "127.0.0.1", 104, "A"))
    with pytest.raises(SettingsError, match="already exists"):
        settings.add_server(Server("a", "127.0.0.1", 105, "B"))
    settings.add_server(Server("b", "localhost", 105, "B"))
    settings.replace_server("a", Server("c", "127.0.0.1", 106, "C"))
    assert [s.name for s in settings.servers] == ["c", "b"]
    with pytest.raises(SettingsError, match="that name is taken"):
        settings.replace_server("c", Server("b", "127.0.0.1", 106, "C"))
    with pytest.raises(SettingsError, match="port"):
        settings.add_server(Server("d", "127.0.0.1", 0, "D"))
    settings.remove_server("b")
    assert [s.name for s in settings.servers] == ["c"]
    with pytest.raises(SettingsError, match=r"known: c"):
        settings.server("b")


def test_validators_accept_edges():
    """Valid edge values pass the validators unchanged."""
    assert validate_ae_title("A" * 16) == "A" * 16
    assert validate_ae_title(" PACS ") == "PACS"
    assert validate_port(1) == 1
    assert validate_port(65535) == 65535
    with pytest.raises(ValueError):
        validate_port(True)


def test_upload_size_warning_and_limit(home, monkeypatch):
    """Files above the warning get a message; files above the limit raise."""
    settings = Settings(upload_warning_mb=1)
    small = home / "small.dcm"
    small.write_bytes(b"x" * 1000)
    big = home / "big.dcm"
    big.write_bytes(b"x" * 1_500_000)
    assert settings.check_upload_size(small) is None
    assert "upload-size warning of 1 MB" in settings.check_upload_size(big)
    monkeypatch.setattr(settings_module, "UPLOAD_LIMIT_MB", 1)
    with pytest.raises(ObjectTooLargeError, match="upload limit"):
        settings.check_upload_size(big)


def test_cli_add_echoes_and_verifies(home, orthanc, capsys):
    """'servers add' runs C-ECHO and saves the server as verified."""
    path = home / "settings.json"
    code = main(
        [
            "servers",
            "add",
            "pacs",
            "--settings",
            str(path),
            "--host",
            "127.0.0.1",
            "--port",
            str(orthanc.dicom_port),
            "--called-aet",
            orthanc.aet,
            "--description",
            "Test PACS",
        ]
    )
    assert code == EXIT_OK
    output = capsys.readouterr().out
    assert "C-ECHO to ORTHANC" in output
    assert "succeeded in" in output
    server = load_settings(path).server("pacs")
    assert server.verified
    assert server.port == orthanc.dicom_port
    assert server.description == "Test PACS"


def test_cli_add_failed_echo_unverified(home, capsys):
    """A server whose echo fails is saved unverified with the reason shown."""
    path = home / "settings.json"
    port = free_port()
    code = main(
        [
            "servers",
            "add",
            "down",
            "--settings",
            str(path),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--called-aet",
            "DOWN",
        ]
    )
    assert code == EXIT_OK
    error = capsys.readouterr().err
    assert "refused" in error
    assert "unverified" in error
    assert not load_settings(path).server("down").verified


def test_cli_edit_list_echo_remove(home, orthanc, capsys):
    """'servers edit' re-checks; list, echo and remove work on saved servers."""
    path = home / "settings.json"
    settings = Settings()
    settings.add_server(Server("pacs", "127.0.0.1", free_port(), orthanc.aet))
    save_settings(settings, path)

    assert (
        main(
            [
                "servers",
                "edit",
                "pacs",
                "--settings",
                str(path),
                "--port",
                str(orthanc.dicom_port),
                "--rename",
                "orthanc",
            ]
        )
        == EXIT_OK
    )
    edited = load_settings(path).server("orthanc")
    assert edited.port == orthanc.dicom_port
    assert edited.verified

    capsys.readouterr()
    assert main(["servers", "list", "--settings", str(path)]) == EXIT_OK
    listing = capsys.readouterr().out
    assert f"orthanc: ORTHANC at 127.0.0.1:{orthanc.dicom_port}, verified" in listing

    assert main(["servers", "echo", "--settings", str(path)]) == EXIT_OK
    assert "orthanc: C-ECHO succeeded" in capsys.readouterr().out

    assert main(["servers", "remove", "orthanc", "--settings", str(path)]) == EXIT_OK
    assert load_settings(path).servers == []


def test_cli_rejects_invalid_add(home, capsys):
    """An invalid AE title on the command line is rejected and nothing is saved."""
    path = home / "settings.json"
    code = main(
        [
            "servers",
            "add",
            "bad",
            "--settings",
            str(path),
            "--host",
            "127.0.0.1",
            "--port",
            "104",
            "--called-aet",
            "WAY_TOO_LONG_AE_TITLE",
            "--no-echo",
        ]
    )
    assert code == EXIT_ERROR
    assert "longer than 16 characters" in capsys.readouterr().err
    assert not path.exists()


def test_cli_echo_adhoc_server(home, orthanc, capsys):
    """'echo' works for a server given by host, port and AE title."""
    code = main(
        [
            "echo",
            "--host",
            "127.0.0.1",
            "--port",
            str(orthanc.dicom_port),
            "--called-aet",
            orthanc.aet,
        ]
    )
    assert code == EXIT_OK
    assert "succeeded" in capsys.readouterr().out


def test_cli_local_settings(home, capsys):
    """'servers local' shows and sets this application's own settings."""
    path = home / "settings.json"
    code = main(
        [
            "servers",
            "local",
            "--settings",
            str(path),
            "--ae-title",
            "WORKSTATION",
            "--port",
            "11113",
            "--cache-directory",
            str(home / "cache"),
            "--upload-warning-mb",
            "512",
        ]
    )
    assert code == EXIT_OK
    output = capsys.readouterr().out
    assert "AE title: WORKSTATION" in output
    assert "Upload limit: 4000 MB (fixed)" in output
    settings = load_settings(path)
    assert settings.ae_title == "WORKSTATION"
    assert settings.port == 11113
    assert settings.cache_path() == home / "cache"
    assert settings.upload_warning_mb == 512

    code = main(["servers", "local", "--settings", str(path), "--port", "0"])
    assert code == EXIT_ERROR
    assert "outside 1 to 65535" in capsys.readouterr().err
    assert load_settings(path).port == 11113
