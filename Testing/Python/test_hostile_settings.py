"""Hostile settings files and cache folders that cannot be written.

A damaged settings file raises SettingsError naming the file, and the command
line prints it without a traceback.

Set MEDIA2DICOM_HYPOTHESIS_EXAMPLES for a longer property-based run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file

from Media2DICOMLib.cli import EXIT_ERROR, main
from Media2DICOMLib.errors import Media2DICOMError, SettingsError
from Media2DICOMLib.outbox import Outbox
from Media2DICOMLib.settings import (
    Server,
    Settings,
    load_settings,
    save_settings,
    settings_to_dict,
)

VALID_SETTINGS = json.dumps(
    settings_to_dict(
        Settings(
            ae_title="HOSTILE",
            servers=[
                Server(name="pacs", host="127.0.0.1", port=104, called_aet="PACS")
            ],
        )
    ),
    indent=2,
)


def examples(default: int) -> int:
    """Return ``default``, or the count in MEDIA2DICOM_HYPOTHESIS_EXAMPLES when set."""
    requested = os.environ.get("MEDIA2DICOM_HYPOTHESIS_EXAMPLES")
    return int(requested) if requested else default


@pytest.fixture
def home(tmp_path, monkeypatch):
    """Point every user folder the settings could use at tmp_path."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("MEDIA2DICOM_SETTINGS", raising=False)
    return tmp_path


# Each case: the bytes of the file, then texts the SettingsError must contain.
BROKEN_FILES = {
    "empty": (b"", ["not valid JSON at line 1, column 1"]),
    "only white space": (b"  \n\t\n", ["not valid JSON at line 3"]),
    "truncated": (VALID_SETTINGS[:70].encode(), ["not valid JSON at line"]),
    "truncated in a string": (b'{"ae_title": "HOS', ["not valid JSON at line 1"]),
    "top level list": (b"[]", ["Expected an object, found []"]),
    "top level null": (b"null", ["Expected an object, found None"]),
    "top level text": (b'"settings"', ["Expected an object, found 'settings'"]),
    "top level number": (b"42", ["Expected an object, found 42"]),
    "servers as object": (b'{"servers": {}}', ["field servers", "a list"]),
    "server as text": (b'{"servers": ["pacs"]}', ["field servers[0]"]),
    "port as text": (b'{"port": "104"}', ["field port", "whole number"]),
    "port as float": (b'{"port": 104.0}', ["field port", "whole number"]),
    "port too large": (b'{"port": 70000}', ["field port", "outside 1 to 65535"]),
    "timeouts as list": (b'{"timeouts": [1, 2]}', ["field timeouts"]),
    "timeout as text": (b'{"timeouts": {"dimse": "30"}}', ["timeouts.dimse"]),
    "timeout negative": (b'{"timeouts": {"acse": -5}}', ["timeouts.acse"]),
    "cache folder as number": (b'{"cache_directory": 7}', ["cache_directory"]),
    "unknown field": (b'{"cache_dir": "/tmp"}', ["cache_dir"]),
    "Latin-1 bytes": (b'{"ae_title": "M\xfcller"}', ["Failed to read", "utf-8"]),
    "UTF-16": ('{"ae_title": "X"}'.encode("utf-16"), ["Failed to read"]),
    "PNG image": (b"\x89PNG\r\n\x1a\n" + bytes(40), ["Failed to read"]),
    "NUL bytes": (b"\x00" * 64, ["not valid JSON"]),
    "JavaScript comment": (b'// settings\n{"port": 104}', ["not valid JSON"]),
    "trailing comma": (b'{"port": 104,}', ["not valid JSON at line 1"]),
}


@pytest.mark.parametrize("case", sorted(BROKEN_FILES))
def test_broken_settings_file_reported(home, case):
    """A damaged settings file raises SettingsError that names the file."""
    data, texts = BROKEN_FILES[case]
    path = home / "settings.json"
    path.write_bytes(data)

    with pytest.raises(SettingsError) as raised:
        load_settings(path)
    message = str(raised.value)
    assert str(path) in message
    for text in texts:
        assert text in message
    assert path.read_bytes() == data


def test_settings_path_is_folder(home):
    """A folder where the settings file should be is reported by name."""
    path = home / "settings.json"
    path.mkdir()

    with pytest.raises(SettingsError) as raised:
        load_settings(path)
    assert str(path) in str(raised.value)
    assert "Failed to read" in str(raised.value)


@pytest.mark.parametrize("case", ["empty", "truncated", "top level list", "UTF-16"])
def test_cli_broken_settings_no_traceback(home, capsys, case):
    """The command line prints the settings error and exits 1, with no traceback."""
    data, texts = BROKEN_FILES[case]
    path = home / "settings.json"
    path.write_bytes(data)

    code = main(["echo", "--settings", str(path), "--server", "pacs"])

    error = capsys.readouterr().err
    assert code == EXIT_ERROR
    assert error.startswith("media2dicom: error: ")
    assert str(path) in error
    assert texts[0] in error
    assert "Traceback" not in error


# Values that once escaped as other exceptions


def test_deeply_nested_json_reported(home):
    path = home / "settings.json"
    path.write_text('{"servers": ' + "[" * 100_000)

    with pytest.raises(SettingsError, match="settings.json"):
        load_settings(path)


def test_huge_integer_reported(home):
    path = home / "settings.json"
    path.write_text('{"port": ' + "9" * 5000 + "}")

    with pytest.raises(SettingsError, match="settings.json"):
        load_settings(path)


@pytest.mark.parametrize("value", ["NaN", "Infinity"])
def test_nonfinite_timeout_rejected(home, value):
    path = home / "settings.json"
    path.write_text('{"timeouts": {"dimse": ' + value + "}}")

    with pytest.raises(SettingsError, match="timeouts.dimse"):
        load_settings(path)


def test_byte_order_mark_accepted(home):
    path = home / "settings.json"
    path.write_bytes(b"\xef\xbb\xbf" + VALID_SETTINGS.encode())

    loaded = load_settings(path)

    assert loaded.ae_title == "HOSTILE"


def test_save_under_file_reported(home):
    blocker = home / "blocker"
    blocker.write_text("a file, not a folder")

    with pytest.raises(SettingsError, match="blocker"):
        save_settings(Settings(), blocker / "settings.json")


# Property-based: any JSON value loads or raises SettingsError

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=12), children, max_size=4),
    ),
    max_leaves=20,
)
FIELD_NAMES = st.sampled_from(
    ["ae_title", "port", "servers", "cache_directory", "timeouts"]
    + ["upload_warning_mb", "upload_limit_mb", "name", "host", "called_aet", "tls"]
)


@settings(
    max_examples=examples(300),
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    top=st.dictionaries(FIELD_NAMES, JSON_VALUES, max_size=5),
    server=st.dictionaries(FIELD_NAMES, JSON_VALUES, max_size=6),
)
def test_random_json_settings_or_error(tmp_path, top, server):
    """Any JSON object of settings fields loads or raises SettingsError."""
    if "servers" not in top:
        top["servers"] = [server]
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(top))

    try:
        loaded = load_settings(path)
    except SettingsError as error:
        assert str(path) in str(error)
        return
    assert isinstance(loaded, Settings)
    save_settings(loaded, tmp_path / "saved.json")
    assert load_settings(tmp_path / "saved.json") == loaded


@settings(
    max_examples=examples(200),
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    cut=st.integers(0, len(VALID_SETTINGS)),
    replacements=st.lists(
        st.tuples(st.integers(0, len(VALID_SETTINGS) - 1), st.integers(0, 255)),
        max_size=3,
    ),
)
def test_damaged_settings_file_or_error(tmp_path, cut, replacements):
    """A truncated settings file with replaced bytes loads or raises SettingsError."""
    data = bytearray(VALID_SETTINGS.encode())
    for position, value in replacements:
        data[position] = value
    path = tmp_path / "settings.json"
    path.write_bytes(bytes(data[:cut]))

    try:
        load_settings(path)
    except SettingsError as error:
        assert str(path) in str(error)


# Cache folders that cannot be written


@pytest.fixture
def blocked_cache(home) -> Path:
    """A cache folder path that runs through a regular file, so mkdir fails."""
    blocker = home / "blocker"
    blocker.write_text("a file, not a folder")
    return blocker / "cache"


def test_outbox_blocked_cache_reported(blocked_cache):
    server = Server(name="pacs", host="127.0.0.1", port=104, called_aet="PACS")
    outbox = Outbox(blocked_cache)

    with pytest.raises(Media2DICOMError, match="blocker"):
        outbox.add([get_testdata_file("CT_small.dcm")], server)


def test_cli_send_blocked_cache_reported(home, blocked_cache, capsys):
    path = home / "settings.json"
    save_settings(Settings(cache_directory=str(blocked_cache)), path)

    arguments = ["send", "--settings", str(path), "--host", "127.0.0.1"]
    arguments += ["--port", "104", "--called-aet", "PACS"]
    code = main(arguments + [get_testdata_file("CT_small.dcm")])

    error = capsys.readouterr().err
    assert code == EXIT_ERROR
    assert "blocker" in error


def test_outbox_list_blocked_cache_empty(blocked_cache):
    """Listing an outbox whose folder cannot exist finds nothing and raises nothing."""
    assert Outbox(blocked_cache).entries() == []


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="root writes into read-only folders, so the case cannot be made",
)
def test_outbox_read_only_cache_reported(home):
    cache = home / "cache"
    cache.mkdir()
    cache.chmod(0o500)
    server = Server(name="pacs", host="127.0.0.1", port=104, called_aet="PACS")
    try:
        with pytest.raises(Media2DICOMError, match="cache"):
            Outbox(cache).add([get_testdata_file("CT_small.dcm")], server)
    finally:
        cache.chmod(0o700)
