"""Servers that refuse, reject, stall, abort or drop the connection.

For each fault the send reports the reason in plain words, keeps the object in
the outbox, ends within the configured time limits, and a retry against a
healthy DCMTK storescp stores the same object. The faulty peers run on
127.0.0.1 (see fault_peers.py and fault_scp.py).
"""

from __future__ import annotations

import struct
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS, code_to_category

import peers
from dicom_checks import assert_dciodvfy_clean
from fault_peers import (
    ABORT_MIDWAY,
    CLOSE_AFTER_ACCEPT,
    CLOSE_AFTER_REQUEST,
    CLOSE_BEFORE_RESPONSE,
    CLOSE_MIDWAY,
    CLOSE_ON_CONNECT,
    CLOSE_ON_RELEASE,
    REJECT,
    STALL_BEFORE_RESPONSE,
    STALL_ON_RELEASE,
    BrokenStoreSCP,
    RawFaultServer,
    server_entry,
)
from fault_scp import SilentListener, TestSCP
from Media2DICOMLib.cli import EXIT_NOT_SENT, EXIT_OK, main
from Media2DICOMLib.encapsulated_stl import (
    ENCAPSULATED_STL_STORAGE,
    write_encapsulated_stl,
)
from Media2DICOMLib.new_series import SeriesInfo
from Media2DICOMLib.outbox import Outbox
from Media2DICOMLib.settings import Server, Settings, Timeouts, save_settings
from Media2DICOMLib.source_study import read_source_series
from Media2DICOMLib.stl import TRIANGLE_DTYPE, open_stl

LIMITS = Timeouts(connect=2, acse=2, dimse=2, network=3)
# A send may wait once for each limit, plus the time to move a few megabytes
# over loopback. The margin is far above that, so only a hang exceeds it.
MAX_SEND_SECONDS = LIMITS.connect + LIMITS.acse + LIMITS.dimse + LIMITS.network + 20
# The test stops waiting for a send that still runs after this long, and fails.
WATCHDOG_SECONDS = 120

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def write_model(folder: Path, source, triangles: int, name: str) -> Path:
    """Write an Encapsulated STL object of ``triangles`` random triangles."""
    records = np.zeros(triangles, TRIANGLE_DTYPE)
    generator = np.random.default_rng(triangles)
    records["vertices"] = generator.uniform(-100, 100, (triangles, 3, 3))
    stl_path = folder / f"{name}.stl"
    header = b"failing server test".ljust(80, b"\x00")
    stl_path.write_bytes(header + struct.pack("<I", triangles) + records.tobytes())

    path = folder / f"{name}.dcm"
    series = SeriesInfo(series_number=903, series_description="Failing servers")
    write_encapsulated_stl(source, open_stl(stl_path), path, series)
    assert_dciodvfy_clean(path)
    written = pydicom.dcmread(path)
    assert written.SOPClassUID == ENCAPSULATED_STL_STORAGE
    assert written.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert int(written.EncapsulatedDocumentLength) == 84 + 50 * triangles
    return path


@pytest.fixture(scope="module")
def source(ct_small):
    return read_source_series(ct_small)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory, source) -> Path:
    return write_model(tmp_path_factory.mktemp("small"), source, 20, "small")


@pytest.fixture(scope="module")
def large_model(tmp_path_factory, source) -> Path:
    """An object of about 5 MB, so a fault can hit it midway."""
    return write_model(tmp_path_factory.mktemp("large"), source, 100_000, "large")


@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
    """A DCMTK storescp shared by the tests of this module for the retries."""
    if not peers.storescp_available():
        pytest.skip("DCMTK storescp is not installed (Debian package dcmtk)")
    server = peers.start_storescp(tmp_path_factory.mktemp("healthy"), aet="HEALTHY")
    yield server
    server.stop()


@pytest.fixture
def faulty():
    """Start faulty peers for one test and stop them all at its end."""
    started = []

    def start(peer):
        started.append(peer)
        return peer

    yield start
    for peer in started:
        peer.stop()


def healthy_entry(healthy) -> Server:
    return Server(
        name="faulty", host="127.0.0.1", port=healthy.port, called_aet=healthy.aet
    )


def send_with_watchdog(outbox: Outbox, server: Server, paths: list):
    """Send ``paths`` through ``outbox``; return (results, seconds).

    The send runs in a thread, so a hang fails the test after WATCHDOG_SECONDS
    instead of blocking the whole run.
    """
    outcome = {}

    def send():
        outcome["results"] = outbox.send_files(server, paths, timeouts=LIMITS)

    started = time.monotonic()
    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    thread.join(WATCHDOG_SECONDS)
    seconds = time.monotonic() - started
    assert not thread.is_alive(), f"the send still runs after {seconds:.0f} s"
    return outcome["results"], seconds


def received_instances(healthy) -> dict:
    """Map SOP Instance UID to dataset for every file storescp wrote."""
    found = {}
    for path in Path(healthy.folder).iterdir():
        if path.is_file():
            dataset = pydicom.dcmread(path)
            found[str(dataset.SOPInstanceUID)] = dataset
    return found


def check_not_sent_then_retry(tmp_path, server, paths, texts, healthy):
    """Check one fault end to end and return the failed results.

    The send must fail with every text of ``texts`` in its message, in time.
    The objects stay queued with the reason, and a retry to ``healthy``
    stores them byte for byte.
    """
    outbox = Outbox(tmp_path / "cache")
    results, seconds = send_with_watchdog(outbox, server, paths)

    assert seconds < MAX_SEND_SECONDS, f"the send took {seconds:.1f} s"
    assert len(results) == len(paths)
    for result in results:
        assert not result.stored
        assert "A copy stays in the outbox" in result.message
        for text in texts:
            assert text in result.message

    entries = outbox.entries()
    assert len(entries) == len(paths)
    for entry in entries:
        assert entry.attempts == 1
        assert entry.last_reason
        assert entry.path.read_bytes() == Path(entry.source_path).read_bytes()

    retried = outbox.send(entries, timeouts=LIMITS, server=healthy_entry(healthy))

    assert [result.category for result in retried] == ["success"] * len(paths)
    assert outbox.entries() == []
    received = received_instances(healthy)
    for path in paths:
        original = pydicom.dcmread(path)
        copy = received[str(original.SOPInstanceUID)]
        assert copy.SOPClassUID == original.SOPClassUID
        assert copy.StudyInstanceUID == original.StudyInstanceUID
        assert copy.PatientID == original.PatientID
        assert bytes(copy.EncapsulatedDocument) == bytes(original.EncapsulatedDocument)
    return results


# Faults before or during the association


def test_connection_refused(tmp_path, small_model, healthy):
    """Nothing listens on the port: reported as refused."""
    server = server_entry(peers.free_port(), "NOBODY")

    check_not_sent_then_retry(
        tmp_path,
        server,
        [small_model],
        ["the connection was refused", "NOBODY at 127.0.0.1"],
        healthy,
    )


# Every result, source and reason of A-ASSOCIATE-RJ (PS3.8 section 9.3.4) with
# the words pynetdicom uses for it.
REJECTIONS = [
    (1, 1, 1, "Rejected Permanent, source: Service User, reason: No reason given"),
    (1, 1, 2, "Application context name not supported"),
    (1, 1, 3, "Calling AE title not recognised"),
    (1, 1, 7, "Called AE title not recognised"),
    (2, 1, 1, "Rejected Transient, source: Service User"),
    (1, 2, 1, "source: Service Provider (ACSE), reason: No reason given"),
    (1, 2, 2, "Protocol version not supported"),
    (2, 3, 1, "source: Service Provider (Presentation), reason: Temporary congestion"),
    (2, 3, 2, "Local limit exceeded"),
]


@pytest.mark.parametrize("result, source_code, reason, words", REJECTIONS)
def test_association_rejected(
    tmp_path, small_model, healthy, faulty, result, source_code, reason, words
):
    """Each rejection reason reaches the message in pynetdicom's words."""
    peer = faulty(RawFaultServer(REJECT, result, source_code, reason))

    check_not_sent_then_retry(
        tmp_path,
        server_entry(peer.port, "REJECTS"),
        [small_model],
        ["the server rejected the association", words],
        healthy,
    )
    assert peer.requests == 1


@pytest.mark.parametrize("mode", [CLOSE_ON_CONNECT, CLOSE_AFTER_REQUEST])
def test_connection_closed_before_response(
    tmp_path, small_model, healthy, faulty, mode
):
    """A server that drops the connection before its response is named."""
    peer = faulty(RawFaultServer(mode))

    check_not_sent_then_retry(
        tmp_path,
        server_entry(peer.port, "DROPS"),
        [small_model],
        ["the server closed the connection", "DROPS at 127.0.0.1"],
        healthy,
    )


def test_silent_server_times_out(tmp_path, small_model, healthy, faulty):
    """A server that accepts TCP but never responds times out after acse."""
    peer = faulty(SilentListener())

    results = check_not_sent_then_retry(
        tmp_path,
        server_entry(peer.port, "SILENT"),
        [small_model],
        [f"no response within {LIMITS.acse:g} s (timed out)"],
        healthy,
    )
    assert results[0].status is None


def test_no_context_accepted(tmp_path, small_model, healthy, faulty):
    """A server that supports only CT Image Storage accepts no proposed context."""
    peer = faulty(TestSCP(contexts=[(CT_IMAGE_STORAGE, [ExplicitVRLittleEndian])]))

    check_not_sent_then_retry(
        tmp_path,
        server_entry(peer.port, peer.aet),
        [small_model],
        ["does not accept Encapsulated STL Storage in Explicit VR Little Endian"],
        healthy,
    )
    assert peer.record.sop_instance_uids == []


def test_stl_only_implicit_vr(tmp_path, small_model, healthy, faulty):
    """A server taking Encapsulated STL only in Implicit VR gets a clear reason.

    The object is Explicit VR Little Endian, and the product proposes only the
    transfer syntax of the file.
    """
    contexts = [(ENCAPSULATED_STL_STORAGE, [ImplicitVRLittleEndian])]
    peer = faulty(TestSCP(contexts=contexts))

    check_not_sent_then_retry(
        tmp_path,
        server_entry(peer.port, peer.aet),
        [small_model],
        ["does not accept Encapsulated STL Storage in Explicit VR Little Endian"],
        healthy,
    )
    requested = set(peer.record.requested_contexts)
    assert (ENCAPSULATED_STL_STORAGE, str(ExplicitVRLittleEndian)) in requested
    assert peer.record.sop_instance_uids == []


# C-STORE statuses


def representative_statuses(category: str) -> list:
    """Return one code per status meaning of ``category`` in pynetdicom's table.

    The first and last code of each range (such as A700 to A7FF) are both
    taken, and codes outside the table are added for failure.
    """
    codes = {}
    for code, (name, meaning) in sorted(STORAGE_SERVICE_CLASS_STATUS.items()):
        if name == category:
            codes.setdefault(meaning, []).append(code)
    chosen = set()
    for group in codes.values():
        chosen.update({group[0], group[-1]})
    if category == "Failure":
        chosen.update({0xD000, 0xFFFF})
    return sorted(chosen)


FAILURE_STATUSES = representative_statuses("Failure")
WARNING_STATUSES = representative_statuses("Warning")


@pytest.mark.parametrize("code", FAILURE_STATUSES, ids=lambda code: f"0x{code:04X}")
def test_store_failure_status(tmp_path, small_model, healthy, faulty, code):
    """Each C-STORE failure status is named in the message and kept queued."""
    peer = faulty(TestSCP(status=code))

    results = check_not_sent_then_retry(
        tmp_path,
        server_entry(peer.port, peer.aet),
        [small_model],
        [f"rejected the object with failure status 0x{code:04X}"],
        healthy,
    )
    assert results[0].status == code
    assert results[0].category == "failure"
    meaning = STORAGE_SERVICE_CLASS_STATUS.get(code, (None, "Unknown"))[1]
    assert meaning in results[0].message
    assert len(peer.record.sop_instance_uids) == 1


@pytest.mark.parametrize("code", WARNING_STATUSES, ids=lambda code: f"0x{code:04X}")
def test_store_warning_status(tmp_path, small_model, faulty, code):
    """A C-STORE warning counts as stored and leaves the outbox empty."""
    peer = faulty(TestSCP(status=code))
    outbox = Outbox(tmp_path / "cache")

    results, seconds = send_with_watchdog(
        outbox, server_entry(peer.port, peer.aet), [small_model]
    )

    assert seconds < MAX_SEND_SECONDS, f"the send took {seconds:.1f} s"
    assert results[0].stored
    assert results[0].category == "warning"
    assert f"with warning status 0x{code:04X}" in results[0].message
    assert code_to_category(code) == "Warning"
    assert outbox.entries() == []


def test_cancel_status_is_failure(tmp_path, small_model, healthy, faulty):
    """The Cancel status 0xFE00 is a failure for a C-STORE."""
    peer = faulty(TestSCP(status=0xFE00))

    results = check_not_sent_then_retry(
        tmp_path,
        server_entry(peer.port, peer.aet),
        [small_model],
        ["status 0xFE00"],
        healthy,
    )
    assert results[0].category == "failure"


# Faults during and after the C-STORE


def test_stall_before_response(tmp_path, small_model, healthy, faulty):
    """A server that delays the C-STORE response past dimse times out."""
    peer = faulty(BrokenStoreSCP(STALL_BEFORE_RESPONSE))

    results = check_not_sent_then_retry(
        tmp_path,
        server_entry(peer.port, peer.aet),
        [small_model],
        ["sent no C-STORE response", "may or may not be stored"],
        healthy,
    )
    assert peer.faults == 1
    assert results[0].status is None


def test_abort_midway_large_object(tmp_path, large_model, small_model, healthy, faulty):
    """A-ABORT during a 5 MB object leaves it and the next object queued."""
    peer = faulty(BrokenStoreSCP(ABORT_MIDWAY, pdus_before_fault=3))

    results = check_not_sent_then_retry(
        tmp_path,
        server_entry(peer.port, peer.aet),
        [large_model, small_model],
        ["BROKENSCP at 127.0.0.1"],
        healthy,
    )
    assert peer.faults == 1
    assert peer.stored == []
    assert "sent no C-STORE response" in results[0].message
    # The second object is not sent, or pynetdicom returns no response for it,
    # depending on when the A-ABORT arrives.
    second = results[1].message
    assert "ended before this object was sent" in second or "no C-STORE" in second


@pytest.mark.parametrize(
    "mode, words",
    [
        (CLOSE_MIDWAY, "sent no C-STORE response"),
        (CLOSE_BEFORE_RESPONSE, "sent no C-STORE response"),
        (CLOSE_AFTER_ACCEPT, "closed the connection"),
    ],
)
def test_socket_closed_without_release(
    tmp_path, large_model, healthy, faulty, mode, words
):
    """A server that closes the TCP connection, with no A-RELEASE or A-ABORT."""
    peer = faulty(BrokenStoreSCP(mode, pdus_before_fault=3))

    check_not_sent_then_retry(
        tmp_path,
        server_entry(peer.port, peer.aet),
        [large_model],
        [words, "BROKENSCP at 127.0.0.1"],
        healthy,
    )
    assert peer.faults == 1


@pytest.mark.parametrize("mode", [CLOSE_ON_RELEASE, STALL_ON_RELEASE])
def test_release_fault_after_store(tmp_path, small_model, faulty, mode):
    """A success status counts even when the release then fails or stalls."""
    peer = faulty(BrokenStoreSCP(mode, stall_seconds=30))
    outbox = Outbox(tmp_path / "cache")

    results, seconds = send_with_watchdog(
        outbox, server_entry(peer.port, peer.aet), [small_model]
    )

    assert seconds < MAX_SEND_SECONDS, f"the send took {seconds:.1f} s"
    assert results[0].category == "success"
    assert outbox.entries() == []
    assert peer.faults == 1
    assert len(peer.stored) == 1


# The command line


def test_cli_send_fault_then_retry(tmp_path, small_model, healthy, faulty, capsys):
    """'media2dicom send' exits 3 on a rejection; 'outbox retry' then stores it."""
    peer = faulty(RawFaultServer(REJECT, 1, 1, 3))
    settings_path = tmp_path / "settings.json"
    settings = Settings(cache_directory=str(tmp_path / "cache"), timeouts=LIMITS)
    settings.servers.append(server_entry(peer.port, "REJECTS", name="pacs"))
    save_settings(settings, settings_path)

    code = main(
        ["send", "--settings", str(settings_path), "--server", "pacs"]
        + [str(small_model)]
    )

    output = capsys.readouterr().out
    assert code == EXIT_NOT_SENT
    assert "Calling AE title not recognised" in output
    assert "retry with 'media2dicom outbox retry'" in output
    assert "0 of 1 object(s) stored." in output

    settings.servers[0] = Server(
        name="pacs", host="127.0.0.1", port=healthy.port, called_aet=healthy.aet
    )
    save_settings(settings, settings_path)
    code = main(["outbox", "retry", "--settings", str(settings_path), "--all"])

    output = capsys.readouterr().out
    assert code == EXIT_OK
    assert "1 of 1 object(s) stored." in output
    uid = str(pydicom.dcmread(small_model).SOPInstanceUID)
    assert uid in received_instances(healthy)
