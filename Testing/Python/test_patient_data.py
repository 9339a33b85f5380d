"""Patient data and access: logs, the C-MOVE storage SCP, and TLS defaults.

Logs at INFO and above must not contain the patient's name, ID or birth date,
on success and on every error path. The storage SCP that receives a C-MOVE
accepts only its own AE title, the queried server and the requested instance,
and closes its port when the retrieval ends. TLS verifies the server unless
the settings turn that off, which is logged.
"""

from __future__ import annotations

import json
from copy import deepcopy
import logging
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)

import peers
from conftest import REPOSITORY
from dicom_checks import assert_dciodvfy_clean
from fault_peers import (
    REJECT,
    STALL_BEFORE_RESPONSE,
    BrokenStoreSCP,
    RawFaultServer,
    server_entry,
)
from fault_scp import TestSCP
from Media2DICOMLib.encapsulated_stl import write_encapsulated_stl
from Media2DICOMLib.errors import NetworkError
from Media2DICOMLib.network import ssl_context_for
from Media2DICOMLib.new_series import SeriesInfo
from Media2DICOMLib.outbox import Outbox
from Media2DICOMLib.query import retrieve_source_series
from Media2DICOMLib.settings import (
    Server,
    Settings,
    Timeouts,
    TLSOptions,
    load_settings,
    save_settings,
)
from Media2DICOMLib.source_study import read_source_series
from Media2DICOMLib.stl import open_stl

PATIENT_NAME = "Zyxwvutsrq^Qwertyuiop"
PATIENT_ID = "PID918273645"
BIRTH_DATE = "19230817"
# Every form in which these values could leak into a log line.
SECRETS = ["Zyxwvutsrq", "Qwertyuiop", PATIENT_ID, BIRTH_DATE, "1923-08-17"]

LIMITS = Timeouts(connect=2, acse=2, dimse=2, network=3)


def leaked(text: str) -> list:
    return [secret for secret in SECRETS if secret in text]


@pytest.fixture
def patient_source(tmp_path, ct_small) -> Path:
    """A source folder whose patient has a distinctive name, ID and birth date."""
    dataset = pydicom.dcmread(ct_small)
    dataset.PatientName = PATIENT_NAME
    dataset.PatientID = PATIENT_ID
    dataset.PatientBirthDate = BIRTH_DATE
    folder = tmp_path / "source"
    folder.mkdir()
    dataset.save_as(folder / "ct.dcm")
    return folder


@pytest.fixture
def stl_file(tmp_path) -> Path:
    path = tmp_path / "model.stl"
    text = (
        "solid model\n facet normal 0 0 1\n  outer loop\n   vertex 0 0 0\n"
        "   vertex 10 0 0\n   vertex 0 10 0\n  endloop\n endfacet\nendsolid model\n"
    )
    path.write_text(text)
    return path


def test_library_logs_no_patient_data(
    tmp_path, patient_source, stl_file, storescp, caplog
):
    """Reading, writing and sending to good and failing servers log no patient data."""
    for logger in ("", "Media2DICOMLib", "pynetdicom", "pydicom"):
        caplog.set_level(logging.INFO, logger=logger)
    source = read_source_series(patient_source)
    path = tmp_path / "model.dcm"
    series = SeriesInfo(series_number=904, series_description="Patient data test")
    write_encapsulated_stl(source, open_stl(stl_file), path, series)
    assert_dciodvfy_clean(path)
    assert str(pydicom.dcmread(path).PatientName) == PATIENT_NAME

    failing = TestSCP(status=0xA700)
    rejecting = RawFaultServer(REJECT, 1, 1, 3)
    stalling = BrokenStoreSCP(STALL_BEFORE_RESPONSE)
    servers = [
        server_entry(storescp.port, storescp.aet, name="good"),
        server_entry(failing.port, failing.aet, name="failing"),
        server_entry(rejecting.port, "REJECTS", name="rejecting"),
        server_entry(stalling.port, stalling.aet, name="stalling"),
    ]
    try:
        outbox = Outbox(tmp_path / "cache")
        results = [
            outbox.send_files(server, [path], timeouts=LIMITS)[0] for server in servers
        ]
    finally:
        for peer in (failing, rejecting, stalling):
            peer.stop()

    assert [result.category for result in results] == [
        "success",
        "failure",
        "not sent",
        "not sent",
    ]
    for result in results:
        assert leaked(result.message) == []
    records = [record for record in caplog.records if record.levelno >= logging.INFO]
    assert any("C-STORE" in record.getMessage() for record in records)
    assert any(record.levelno >= logging.ERROR for record in records)
    for record in records:
        text = record.getMessage()
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        assert leaked(text) == [], f"{record.name}: {text}"


def run_cli(*arguments: str) -> subprocess.CompletedProcess:
    """Run the command line with -v (INFO logs) in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "Media2DICOMLib.cli", "-v", *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPOSITORY,
    )


def test_cli_logs_no_patient_data(tmp_path, patient_source, stl_file, storescp):
    """The command line at -v prints no patient data on success or failure."""
    settings_path = tmp_path / "settings.json"
    save_settings(
        Settings(cache_directory=str(tmp_path / "cache"), timeouts=LIMITS),
        settings_path,
    )
    output = tmp_path / "output"
    rejecting = RawFaultServer(REJECT, 1, 1, 7)
    try:
        runs = [
            run_cli(
                "encapsulate",
                str(stl_file),
                "--source",
                str(patient_source),
                "-o",
                str(output),
                "--settings",
                str(settings_path),
            )
        ]
        written = sorted(output.glob("*.dcm"))
        for port, aet in ((storescp.port, storescp.aet), (rejecting.port, "REJECTS")):
            server = ["--host", "127.0.0.1", "--port", str(port), "--called-aet", aet]
            runs.append(
                run_cli(
                    "send",
                    "--settings",
                    str(settings_path),
                    *server,
                    *map(str, written),
                )
            )
        runs.append(run_cli("outbox", "list", "--settings", str(settings_path)))
    finally:
        rejecting.stop()

    assert len(written) == 1
    assert_dciodvfy_clean(written[0])
    assert str(pydicom.dcmread(written[0]).PatientName) == PATIENT_NAME
    assert [run.returncode for run in runs] == [0, 0, 3, 0]
    assert "INFO" in runs[1].stderr
    assert "Called AE title not recognised" in runs[2].stdout + runs[2].stderr
    for run in runs:
        assert leaked(run.stdout) == [], run.stdout
        assert leaked(run.stderr) == [], run.stderr


def test_invalid_source_values_not_logged(tmp_path, ct_small, stl_file, caplog):
    dataset = pydicom.dcmread(ct_small)
    dataset.PatientName = PATIENT_NAME
    dataset.PatientID = PATIENT_ID + "-" + "0" * 60
    dataset.PatientBirthDate = "1923.08.17"
    folder = tmp_path / "old-scanner"
    folder.mkdir()
    dataset.save_as(folder / "ct.dcm")
    caplog.set_level(logging.INFO)

    source = read_source_series(folder)
    path = tmp_path / "model.dcm"
    series = SeriesInfo(series_number=904, series_description="Patient data test")
    write_encapsulated_stl(source, open_stl(stl_file), path, series)

    secrets = [PATIENT_ID, "1923.08.17"]
    for record in caplog.records:
        if record.levelno >= logging.INFO:
            assert not [s for s in secrets if s in record.getMessage()]


# The temporary storage SCP of C-MOVE


class FakePacs:
    """A pynetdicom PACS that responds to C-FIND and C-MOVE for one CT instance.

    Before it sends the instance to the move destination, the C-MOVE handler
    runs ``intrusion(move_port)``, which tries to reach the destination in a
    way the storage SCP must reject, and keeps what that returns.
    """

    aet = "FAKEPACS"

    def __init__(self, instance: Dataset, move_port: int, intrusion=None) -> None:
        self.instance = instance
        self.move_port = move_port
        self.intrusion = intrusion
        self.intrusion_result = None
        self.move_status = 0x0000
        ae = AE(ae_title=self.aet)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelMove)
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        handlers = [(evt.EVT_C_FIND, self._on_find), (evt.EVT_C_MOVE, self._on_move)]
        self.server = ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=handlers
        )
        self.port = self.server.socket.getsockname()[1]

    def entry(self) -> Server:
        return Server(
            name="pacs", host="127.0.0.1", port=self.port, called_aet=self.aet
        )

    def _on_find(self, event):
        match = Dataset()
        match.QueryRetrieveLevel = "IMAGE"
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            setattr(match, keyword, getattr(self.instance, keyword))
        match.SOPClassUID = self.instance.SOPClassUID
        match.InstanceNumber = self.instance.get("InstanceNumber", 1)
        yield 0xFF00, match

    def _on_move(self, event):
        if self.intrusion is not None:
            self.intrusion_result = self.intrusion(self.move_port)
        yield "127.0.0.1", self.move_port
        if self.move_status != 0x0000:
            yield 1
            yield self.move_status, None
            return
        yield 1
        yield 0xFF00, self.instance

    def stop(self) -> None:
        self.server.shutdown()


def store_to(port: int, dataset: Dataset, calling_aet: str, called_aet: str, **kwargs):
    """Try a C-STORE of ``dataset`` to 127.0.0.1:``port``.

    Returns "rejected" when the association fails, else the C-STORE status.
    """
    ae = AE(ae_title=calling_aet)
    ae.add_requested_context(dataset.SOPClassUID, ExplicitVRLittleEndian)
    ae.acse_timeout = 5
    ae.dimse_timeout = 5
    assoc = ae.associate("127.0.0.1", port, ae_title=called_aet, **kwargs)
    if not assoc.is_established:
        return "rejected"
    try:
        status = assoc.send_c_store(dataset)
        return int(status.Status) if "Status" in status else None
    finally:
        assoc.release()


def port_is_closed(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return False
    except ConnectionRefusedError:
        return True


@pytest.fixture
def ct_instance(ct_small) -> Dataset:
    dataset = pydicom.dcmread(ct_small)
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return dataset


def retrieve_with(instance: Dataset, intrusion):
    """Retrieve ``instance`` by C-MOVE from a FakePacs running ``intrusion``."""
    move_port = peers.free_port()
    pacs = FakePacs(instance, move_port, intrusion)
    try:
        source = retrieve_source_series(
            pacs.entry(),
            str(instance.StudyInstanceUID),
            str(instance.SeriesInstanceUID),
            method="move",
            calling_aet="MEDIA2DICOM",
            move_port=move_port,
            bind_address="127.0.0.1",
            timeouts=LIMITS,
        )
    finally:
        pacs.stop()
    return source, pacs.intrusion_result, move_port


def other_study(instance: Dataset) -> Dataset:
    copy = deepcopy(instance)
    copy.StudyInstanceUID = generate_uid()
    copy.SOPInstanceUID = generate_uid()
    return copy


def test_move_scp_accepts_requested_instance(ct_instance):
    """Without intrusion the requested instance arrives and the port closes."""
    source, _, move_port = retrieve_with(ct_instance, None)

    assert source.header.SOPInstanceUID == ct_instance.SOPInstanceUID
    assert source.study_instance_uid == ct_instance.StudyInstanceUID
    assert "PixelData" not in source.header
    assert port_is_closed(move_port)


def test_move_scp_rejects_other_calling_aet(ct_instance):
    """An association from another calling AE title is rejected."""

    def intrusion(port):
        return store_to(port, ct_instance, "INTRUDER", "MEDIA2DICOM")

    source, outcome, move_port = retrieve_with(ct_instance, intrusion)

    assert outcome == "rejected"
    assert source.header.SOPInstanceUID == ct_instance.SOPInstanceUID
    assert port_is_closed(move_port)


def test_move_scp_rejects_other_called_aet(ct_instance):
    def intrusion(port):
        return store_to(port, ct_instance, FakePacs.aet, "NOT-MEDIA2DICOM")

    source, outcome, move_port = retrieve_with(ct_instance, intrusion)

    assert outcome == "rejected"
    assert port_is_closed(move_port)


def test_move_scp_rejects_other_study(ct_instance):
    """A C-STORE of an instance of another study gets a failure status."""
    intruder = other_study(ct_instance)

    def intrusion(port):
        return store_to(port, intruder, FakePacs.aet, "MEDIA2DICOM")

    source, outcome, move_port = retrieve_with(ct_instance, intrusion)

    assert outcome == 0xA900
    assert source.header.SOPInstanceUID == ct_instance.SOPInstanceUID
    assert source.study_instance_uid == ct_instance.StudyInstanceUID
    assert port_is_closed(move_port)


def test_move_scp_rejects_other_instance(ct_instance):
    """A C-STORE of another instance of the same study gets a failure status."""
    intruder = deepcopy(ct_instance)
    intruder.SOPInstanceUID = generate_uid()

    def intrusion(port):
        return store_to(port, intruder, FakePacs.aet, "MEDIA2DICOM")

    source, outcome, _ = retrieve_with(ct_instance, intrusion)

    assert outcome == 0xA900
    assert source.header.SOPInstanceUID == ct_instance.SOPInstanceUID


def test_move_scp_rejects_other_address(ct_instance):
    """A C-STORE from an address the server name does not resolve to is refused.

    The intruder connects from 127.0.0.2, another loopback address, to the
    storage SCP on 127.0.0.1.
    """

    def intrusion(port):
        return store_to(
            port,
            ct_instance,
            FakePacs.aet,
            "MEDIA2DICOM",
            bind_address=("127.0.0.2", 0),
        )

    source, outcome, move_port = retrieve_with(ct_instance, intrusion)

    assert outcome == 0x0124
    assert source.header.SOPInstanceUID == ct_instance.SOPInstanceUID
    assert port_is_closed(move_port)


def test_move_scp_closed_after_failure(ct_instance):
    """A failed C-MOVE raises NetworkError and still closes the port."""
    move_port = peers.free_port()
    pacs = FakePacs(ct_instance, move_port)
    pacs.move_status = 0xA801
    try:
        with pytest.raises(NetworkError) as raised:
            retrieve_source_series(
                pacs.entry(),
                str(ct_instance.StudyInstanceUID),
                str(ct_instance.SeriesInstanceUID),
                method="move",
                move_port=move_port,
                bind_address="127.0.0.1",
                timeouts=LIMITS,
            )
    finally:
        pacs.stop()

    assert "0xA801" in str(raised.value)
    assert "move destination MEDIA2DICOM" in str(raised.value)
    assert port_is_closed(move_port)


# TLS


@pytest.fixture
def ca_file(tmp_path) -> Path:
    """A self-signed certificate made with openssl, to trust as a CA."""
    certificate = tmp_path / "ca.pem"
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes"]
    command += ["-keyout", str(tmp_path / "ca.key"), "-out", str(certificate)]
    command += ["-subj", "/CN=Media2DICOM test CA", "-days", "1"]
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=60)
    except FileNotFoundError:
        pytest.skip("openssl is not installed (Debian package openssl)")
    return certificate


def test_tls_verifies_by_default(tmp_path, ca_file, caplog):
    """TLS options from the file verify the certificate and host name by default."""
    settings_path = tmp_path / "settings.json"
    server = {"name": "pacs", "host": "127.0.0.1", "port": 2762, "called_aet": "PACS"}
    server["tls"] = {"ca_file": str(ca_file)}
    settings_path.write_text(json.dumps({"servers": [server]}))
    caplog.set_level(logging.INFO)

    loaded = load_settings(settings_path).server("pacs")
    context = ssl_context_for(loaded)

    assert loaded.tls.verify is True
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert not any("verification is off" in r.getMessage() for r in caplog.records)


def test_tls_verification_off_is_logged(tmp_path, caplog):
    """Turning verification off is a saved choice and logs a warning with the server."""
    server = Server(
        name="pacs",
        host="127.0.0.1",
        port=2762,
        called_aet="PACS",
        tls=TLSOptions(verify=False),
    )
    settings_path = tmp_path / "settings.json"
    save_settings(Settings(servers=[server]), settings_path)
    caplog.set_level(logging.WARNING, logger="Media2DICOMLib")

    loaded = load_settings(settings_path).server("pacs")
    context = ssl_context_for(loaded)

    assert '"verify": false' in settings_path.read_text()
    assert loaded.tls.verify is False
    assert context.verify_mode == ssl.CERT_NONE
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "TLS certificate verification is off for PACS at 127.0.0.1:2762"
        in r.getMessage()
        for r in warnings
    )


def test_tls_without_ca_file_uses_system_store():
    server = Server(
        name="pacs", host="127.0.0.1", port=2762, called_aet="PACS", tls=TLSOptions()
    )

    context = ssl_context_for(server)

    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
