"""The outbox: queued copies, retries, and a send killed midway."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pydicom
import pytest

from conftest import REPOSITORY
from dicom_checks import assert_dciodvfy_clean
from fault_scp import scp_factory, scp_server, write_encapsulated_pdf  # noqa: F401
from Media2DICOMLib.cli import EXIT_NOT_SENT, EXIT_OK, EXIT_USAGE, main
from Media2DICOMLib.outbox import Outbox
from Media2DICOMLib.settings import Server, Settings, Timeouts, save_settings
from Media2DICOMLib.source_study import read_source_series
from peers import free_port

SHORT = Timeouts(connect=5, acse=5, dimse=30, network=30)


@pytest.fixture
def source(shared_data):
    return read_source_series(shared_data / "ct-3slice")


@pytest.fixture
def document(tmp_path, source):
    path = write_encapsulated_pdf(source, tmp_path / "document.dcm", 100_000)
    assert_dciodvfy_clean(path)
    return path


@pytest.fixture
def settings_file(tmp_path, monkeypatch):
    """A settings file under tmp_path; the user's folders are never touched."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    path = tmp_path / "settings.json"
    monkeypatch.setenv("MEDIA2DICOM_SETTINGS", str(path))
    return path


def save_server_settings(path, cache, server: Server) -> Settings:
    settings = Settings(cache_directory=str(cache), timeouts=SHORT)
    settings.servers.append(server)
    save_settings(settings, path)
    return settings


def test_add_copies_into_outbox(tmp_path, document, scp_factory):
    """Adding an object copies it and writes its state beside it."""
    outbox = Outbox(tmp_path / "cache")
    server = scp_server(scp_factory())
    entries = outbox.add([document], server)
    assert len(entries) == 1
    entry = entries[0]
    original = pydicom.dcmread(document, stop_before_pixels=True)
    assert entry.sop_instance_uid == original.SOPInstanceUID
    assert entry.sop_class_uid == original.SOPClassUID
    assert entry.path.parent.parent == tmp_path / "cache" / "outbox"
    assert entry.path.read_bytes() == document.read_bytes()
    assert entry.source_path == str(document)
    assert entry.attempts == 0
    state = json.loads(entry.state_path.read_text())
    assert state["sop_instance_uid"] == original.SOPInstanceUID
    assert state["server"]["port"] == server.port


def test_add_same_object_once(tmp_path, document, scp_factory):
    """Queuing one object twice for one server keeps one entry."""
    outbox = Outbox(tmp_path / "cache")
    server = scp_server(scp_factory())
    outbox.add([document], server)
    outbox.add([document], server)
    assert len(outbox.entries()) == 1


def test_send_success_empties_outbox(tmp_path, document, scp_factory):
    """A stored object leaves the outbox and the result names the original file."""
    scp = scp_factory()
    outbox = Outbox(tmp_path / "cache")
    results = outbox.send_files(scp_server(scp), [document])
    assert results[0].category == "success"
    assert results[0].path == document
    assert outbox.entries() == []
    assert scp.record.sop_instance_uids == [results[0].sop_instance_uid]


def test_send_warning_counts_as_done(tmp_path, document, scp_factory):
    """A warning status marks the object done."""
    scp = scp_factory(status=0xB007)
    outbox = Outbox(tmp_path / "cache")
    results = outbox.send_files(scp_server(scp), [document])
    assert results[0].category == "warning"
    assert outbox.entries() == []


def test_send_failure_stays_queued(tmp_path, document, scp_factory):
    """A failure status keeps the object with the reason and attempt time."""
    scp = scp_factory(status=0xA700)
    outbox = Outbox(tmp_path / "cache")
    results = outbox.send_files(scp_server(scp), [document])
    assert results[0].category == "failure"
    assert "outbox retry" in results[0].message
    entries = outbox.entries()
    assert len(entries) == 1
    assert entries[0].attempts == 1
    assert entries[0].last_attempt
    assert "0xA700" in entries[0].last_reason
    assert document.exists()


def test_retry_sends_same_uid(tmp_path, document, scp_factory):
    """After a refused connection, a retry to the server sends the same UID."""
    closed = Server(name="test", host="127.0.0.1", port=free_port(), called_aet="X")
    outbox = Outbox(tmp_path / "cache")
    first = outbox.send_files(closed, [document], timeouts=SHORT)
    assert first[0].category == "not sent"
    queued = outbox.entries("test")
    assert len(queued) == 1
    assert "refused" in queued[0].last_reason

    scp = scp_factory()
    moved = Server(name="test", host="127.0.0.1", port=scp.port, called_aet=scp.aet)
    second = outbox.send(queued, server=moved)
    assert second[0].category == "success"
    assert scp.record.sop_instance_uids == [first[0].sop_instance_uid]
    assert outbox.entries() == []


def test_damaged_state_is_skipped(tmp_path, document, scp_factory, caplog):
    """A damaged state file is skipped with an error in the log."""
    outbox = Outbox(tmp_path / "cache")
    entry = outbox.add([document], scp_server(scp_factory()))[0]
    entry.state_path.write_text("{ not json")
    assert outbox.entries() == []
    assert "damaged outbox state file" in caplog.text


def test_cli_list_retry_discard(settings_file, tmp_path, document, scp_factory, capsys):
    """The outbox commands list, retry and discard queued objects."""
    cache = tmp_path / "cache"
    closed = Server(name="pacs", host="127.0.0.1", port=free_port(), called_aet="PACS")
    save_server_settings(settings_file, cache, closed)
    uid = str(pydicom.dcmread(document, stop_before_pixels=True).SOPInstanceUID)

    assert main(["send", "--server", "pacs", str(document)]) == EXIT_NOT_SENT
    assert main(["outbox", "list"]) == EXIT_OK
    listing = capsys.readouterr().out
    assert uid in listing
    assert "1 object(s) queued" in listing
    assert "refused" in listing

    scp = scp_factory()
    save_server_settings(
        settings_file,
        cache,
        Server(name="pacs", host="127.0.0.1", port=scp.port, called_aet=scp.aet),
    )
    assert main(["outbox", "retry", "--uid", uid]) == EXIT_OK
    assert scp.record.sop_instance_uids == [uid]
    assert Outbox(cache).entries() == []

    assert (
        main(
            [
                "send",
                "--host",
                "127.0.0.1",
                "--port",
                str(free_port()),
                "--called-aet",
                "GONE",
                str(document),
            ]
        )
        == EXIT_NOT_SENT
    )
    assert len(Outbox(cache).entries()) == 1
    assert main(["outbox", "discard", "--all"]) == EXIT_OK
    assert Outbox(cache).entries() == []


def test_cli_retry_defaults_to_all(settings_file, tmp_path, document, scp_factory):
    """'outbox retry' with no selection retries everything; discard needs one."""
    cache = tmp_path / "cache"
    closed = Server(name="pacs", host="127.0.0.1", port=free_port(), called_aet="PACS")
    save_server_settings(settings_file, cache, closed)
    assert main(["send", "--server", "pacs", str(document)]) == EXIT_NOT_SENT

    assert main(["outbox", "discard"]) == EXIT_USAGE
    assert len(Outbox(cache).entries()) == 1

    scp = scp_factory()
    save_server_settings(
        settings_file,
        cache,
        Server(name="pacs", host="127.0.0.1", port=scp.port, called_aet=scp.aet),
    )
    assert main(["outbox", "retry"]) == EXIT_OK
    assert len(scp.record.sop_instance_uids) == 1
    assert Outbox(cache).entries() == []


def test_killed_send_retry_completes(settings_file, tmp_path, source, scp_factory):
    """A send killed midway is completed by a retry with the same UID."""
    large = write_encapsulated_pdf(source, tmp_path / "large.dcm", 20_000_000)
    assert_dciodvfy_clean(large)
    uid = str(pydicom.dcmread(large, stop_before_pixels=True).SOPInstanceUID)
    scp = scp_factory(slow=True, delay=0.05)
    cache = tmp_path / "cache"
    save_server_settings(settings_file, cache, scp_server(scp, "slow"))

    environment = dict(os.environ, PYTHONPATH=str(REPOSITORY))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "Media2DICOMLib.cli",
            "send",
            "--server",
            "slow",
            str(large),
        ],
        cwd=REPOSITORY,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert scp.record.pdata_started.wait(timeout=120), "the send never started"
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert scp.record.sop_instance_uids == []

    queued = Outbox(cache).entries()
    assert len(queued) == 1
    assert queued[0].sop_instance_uid == uid
    assert queued[0].attempts == 1

    scp.slow = False
    assert main(["outbox", "retry", "--all"]) == EXIT_OK
    assert scp.record.sop_instance_uids == [uid]
    received = scp.record.datasets[0]
    original = pydicom.dcmread(large)
    assert received.StudyInstanceUID == original.StudyInstanceUID
    assert received.SeriesInstanceUID == original.SeriesInstanceUID
    assert received.EncapsulatedDocument == original.EncapsulatedDocument
    assert Outbox(cache).entries() == []
