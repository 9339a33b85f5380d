"""Misbehaving DICOM peers for the network tests, all on 127.0.0.1.

Orthanc and storescp behave well. These pynetdicom SCPs reject, abort, stay
silent, return chosen statuses or receive slowly, and the HTTP mock checks
authentication, so the tests can check how the library reports each case.
"""

from __future__ import annotations

import datetime
import json
import socket
import threading
import time

import pytest
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.sop_class import Verification
from pynetdicom.presentation import AllStoragePresentationContexts

from Media2DICOMLib.new_series import (
    SeriesInfo,
    base_dataset,
    finish_character_set,
    save_dataset,
)
from Media2DICOMLib.settings import Server
from Media2DICOMLib.source_study import SourceSeries

ENCAPSULATED_PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"


@dataclass
class ScpRecord:
    """Requests and objects received by a test SCP."""

    sop_instance_uids: list = field(default_factory=list)
    datasets: list = field(default_factory=list)
    calling_aets: list = field(default_factory=list)
    transfer_syntaxes: list = field(default_factory=list)
    requested_contexts: list = field(default_factory=list)
    pdata_started: threading.Event = field(default_factory=threading.Event)


class TestSCP:
    """A pynetdicom storage SCP with switchable faults.

    ``status`` is the C-STORE status returned. ``slow`` makes the SCP sleep
    ``delay`` seconds per received PDU (a slow link). ``contexts`` restricts
    the accepted SOP class and transfer syntax pairs.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        aet: str = "FAULTSCP",
        status: int = 0x0000,
        contexts: Optional[list] = None,
        require_calling_aet: Optional[list] = None,
        abort_on_request: bool = False,
        slow: bool = False,
        delay: float = 0.05,
    ) -> None:
        self.aet = aet
        self.status = status
        self.slow = slow
        self.delay = delay
        self.record = ScpRecord()
        ae = AE(ae_title=aet)
        if contexts is None:
            for context in AllStoragePresentationContexts:
                ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        else:
            for sop_class, syntaxes in contexts:
                ae.add_supported_context(sop_class, syntaxes)
        ae.add_supported_context(Verification)
        if require_calling_aet:
            ae.require_calling_aet = require_calling_aet
        handlers = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_PDU_RECV, self._on_pdu),
            (evt.EVT_ACCEPTED, self._on_accepted),
        ]
        if abort_on_request:
            handlers.append((evt.EVT_REQUESTED, lambda event: event.assoc.abort()))
        self.server = ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=handlers
        )
        self.port = self.server.socket.getsockname()[1]

    def _on_accepted(self, event) -> None:
        for context in event.assoc.requestor.requested_contexts:
            pairs = [
                (str(context.abstract_syntax), str(ts))
                for ts in context.transfer_syntax
            ]
            self.record.requested_contexts.extend(pairs)

    def _on_pdu(self, event) -> None:
        if type(event.pdu).__name__ == "P_DATA_TF":
            self.record.pdata_started.set()
            if self.slow:
                time.sleep(self.delay)

    def _on_store(self, event) -> int:
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        self.record.sop_instance_uids.append(str(dataset.SOPInstanceUID))
        self.record.datasets.append(dataset)
        self.record.calling_aets.append(event.assoc.requestor.ae_title.strip())
        self.record.transfer_syntaxes.append(str(event.context.transfer_syntax))
        return self.status

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def scp_factory():
    """Start TestSCPs with the given options; all stop when the test ends."""
    started = []

    def start(**options):
        scp = TestSCP(**options)
        started.append(scp)
        return scp

    yield start
    for scp in started:
        scp.stop()


def scp_server(scp: TestSCP, name: str = "test") -> Server:
    """Return the :class:`Server` entry that points at ``scp``."""
    return Server(name=name, host="127.0.0.1", port=scp.port, called_aet=scp.aet)


class MockStow:
    """A loopback STOW-RS endpoint that checks the Authorization header.

    It returns the STOW-RS response the test sets in ``reply`` (a DICOM JSON
    object), or HTTP 401 when the header differs from ``expected_authorization``.
    With ``ssl_context`` it serves HTTPS.
    """

    def __init__(self, expected_authorization: str, ssl_context=None) -> None:
        self.expected_authorization = expected_authorization
        self.reply = {}
        self.authorizations = []
        mock = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                self.rfile.read(length)
                authorization = self.headers.get("Authorization", "")
                mock.authorizations.append(authorization)
                if authorization != mock.expected_authorization:
                    self.send_response(401, "Unauthorized")
                    self.end_headers()
                    return
                body = json.dumps(mock.reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if ssl_context is not None:
            self.http.socket = ssl_context.wrap_socket(
                self.http.socket, server_side=True
            )
            scheme = "https"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"{scheme}://127.0.0.1:{self.http.server_address[1]}/dicom-web"

    def stop(self) -> None:
        self.http.shutdown()
        self.http.server_close()


def stow_reply(sop_class_uid, sop_instance_uid, failure=None, warning=None) -> dict:
    item = {
        "00081150": {"vr": "UI", "Value": [sop_class_uid]},
        "00081155": {"vr": "UI", "Value": [sop_instance_uid]},
    }
    if failure is not None:
        item["00081197"] = {"vr": "US", "Value": [failure]}
        return {"00081198": {"vr": "SQ", "Value": [item]}}
    if warning is not None:
        item["00081196"] = {"vr": "US", "Value": [warning]}
    return {"00081199": {"vr": "SQ", "Value": [item]}}


class SilentListener:
    """A TCP port that accepts connections and never sends a byte."""

    def __init__(self) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(8)
        self.port = self.socket.getsockname()[1]

    def stop(self) -> None:
        self.socket.close()


def write_encapsulated_pdf(source: SourceSeries, path: Path, size: int) -> Path:
    """Write an Encapsulated PDF object of about ``size`` bytes into the source study.

    The payload is a minimal PDF padded with a comment, so the object is large
    without needing a large input file.
    """
    series = SeriesInfo(series_number=950, series_description="Network test document")
    dataset = base_dataset(source, series, ENCAPSULATED_PDF_STORAGE, "DOC")
    now = datetime.datetime.now()
    dataset.ConversionType = "WSD"
    dataset.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    dataset.BurnedInAnnotation = "NO"
    dataset.DocumentTitle = "Network test document"
    dataset.ConceptNameCodeSequence = DicomSequence([])
    dataset.MIMETypeOfEncapsulatedDocument = "application/pdf"
    body = b"%PDF-1.4\n%" + b"x" * max(0, size - 64) + b"\n%%EOF\n"
    if len(body) % 2:
        body += b"\n"
    dataset.EncapsulatedDocument = body
    dataset.EncapsulatedDocumentLength = len(body)
    references = []
    for instance in source.instances:
        item = Dataset()
        item.ReferencedSOPClassUID = instance.sop_class_uid
        item.ReferencedSOPInstanceUID = instance.sop_instance_uid
        references.append(item)
    dataset.SourceInstanceSequence = DicomSequence(references)
    finish_character_set(dataset, source)
    save_dataset(dataset, path)
    return path
