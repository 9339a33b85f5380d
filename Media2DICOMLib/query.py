"""Query a PACS with C-FIND and retrieve source metadata with C-MOVE or C-GET.

:func:`find` returns rows a person can choose from, at patient, study, series
or image level. :func:`retrieve_source_series` builds the same
:class:`~Media2DICOMLib.source_study.SourceSeries` that local files give, with
the least traffic. The instance list comes from an image-level C-FIND. The
header comes from one instance, fetched by C-GET (no inbound port) or by C-MOVE
to a storage SCP that runs only during the retrieval.
"""

from __future__ import annotations

import logging
import socket
import threading
from dataclasses import dataclass
from typing import Optional

from pydicom.dataset import Dataset
from pynetdicom import ALL_TRANSFER_SYNTAXES, build_role, evt
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from pynetdicom.presentation import build_context
from pynetdicom.status import (
    QR_FIND_SERVICE_CLASS_STATUS,
    QR_GET_SERVICE_CLASS_STATUS,
    QR_MOVE_SERVICE_CLASS_STATUS,
)

from Media2DICOMLib.errors import NetworkError
from Media2DICOMLib.network import DEFAULT_CALLING_AET, _make_ae, associate
from Media2DICOMLib.settings import DEFAULT_PORT, Server, Timeouts
from Media2DICOMLib.source_study import SourceInstance, SourceSeries

LOGGER = logging.getLogger(__name__)

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")

# Return keys requested at each level, besides the filters.
_RETURN_KEYS = {
    "PATIENT": (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "NumberOfPatientRelatedStudies",
    ),
    "STUDY": (
        "PatientName",
        "PatientID",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "StudyID",
        "StudyDescription",
        "AccessionNumber",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    "SERIES": (
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SeriesNumber",
        "SeriesDescription",
        "Modality",
        "BodyPartExamined",
        "NumberOfSeriesRelatedInstances",
    ),
    "IMAGE": (
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "SOPClassUID",
        "InstanceNumber",
    ),
}


@dataclass
class QueryRow:
    """One C-FIND (or QIDO-RS) match: its level and the returned attributes."""

    level: str
    dataset: Dataset

    def value(self, keyword: str) -> str:
        """Return the attribute as text, "" when absent or undecodable."""
        try:
            value = self.dataset.get(keyword)
        except Exception:  # a value under a character set pydicom cannot decode
            return "(undecodable)"
        if value is None:
            return ""
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            return "\\".join(str(item) for item in value)
        return str(value)

    def describe(self) -> str:
        """Return one line for a person choosing among the rows."""
        keys = {
            "PATIENT": ("PatientName", "PatientID", "PatientBirthDate"),
            "STUDY": (
                "StudyDate",
                "PatientName",
                "PatientID",
                "AccessionNumber",
                "ModalitiesInStudy",
                "StudyDescription",
                "StudyInstanceUID",
            ),
            "SERIES": (
                "SeriesNumber",
                "Modality",
                "SeriesDescription",
                "NumberOfSeriesRelatedInstances",
                "SeriesInstanceUID",
            ),
            "IMAGE": ("InstanceNumber", "SOPClassUID", "SOPInstanceUID"),
        }[self.level]
        return "  ".join(self.value(keyword) or "-" for keyword in keys)


def build_identifier(
    level: str,
    patient_name: Optional[str] = None,
    patient_id: Optional[str] = None,
    accession_number: Optional[str] = None,
    study_date: Optional[str] = None,
    modality: Optional[str] = None,
    study_instance_uid: Optional[str] = None,
    series_instance_uid: Optional[str] = None,
) -> Dataset:
    """Build the C-FIND identifier of one query.

    ``patient_name`` may contain the wildcards ``*`` and ``?``. ``study_date``
    is a date (``YYYYMMDD``) or a range (``YYYYMMDD-YYYYMMDD``, either end
    open). ``modality`` filters Modalities in Study at study level and
    Modality at series level. Non-ASCII filters are sent as UTF-8
    (``ISO_IR 192``).

    Raises
    ------
    NetworkError
        When the level is unknown or a level below study lacks the UIDs of
        the levels above it (C-FIND in the Study Root model is hierarchical).
    """
    level = level.upper()
    if level not in LEVELS:
        raise NetworkError(
            f"Unknown query level {level!r}; use one of {', '.join(LEVELS)}."
        )
    if level in ("SERIES", "IMAGE") and not study_instance_uid:
        raise NetworkError(
            f"A {level.lower()}-level query needs the Study Instance UID. Find it "
            "with a study-level query first."
        )
    if level == "IMAGE" and not series_instance_uid:
        raise NetworkError(
            "An image-level query needs the Series Instance UID. Find it with a "
            "series-level query first."
        )

    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    for keyword in _RETURN_KEYS[level]:
        setattr(identifier, keyword, "")

    filters = {
        "PatientName": patient_name,
        "PatientID": patient_id,
        "AccessionNumber": accession_number,
        "StudyDate": study_date,
        "StudyInstanceUID": study_instance_uid,
        "SeriesInstanceUID": series_instance_uid,
    }
    if level == "STUDY":
        filters["ModalitiesInStudy"] = modality
    elif level == "SERIES":
        filters["Modality"] = modality
    for keyword, value in filters.items():
        if value:
            setattr(identifier, keyword, value)
    if any(isinstance(v, str) and not v.isascii() for v in filters.values()):
        identifier.SpecificCharacterSet = "ISO_IR 192"
    return identifier


def find(
    server: Server,
    level: str = "STUDY",
    calling_aet: str = DEFAULT_CALLING_AET,
    timeouts: Optional[Timeouts] = None,
    **filters,
) -> list:
    """Query ``server`` with C-FIND and return the matches as :class:`QueryRow`.

    ``filters`` are the keyword arguments of :func:`build_identifier`.
    Patient-level queries use the Patient Root model, the others Study Root.

    Raises
    ------
    NetworkError
        When the association fails or the server returns a failure status.
    """
    identifier = build_identifier(level, **filters)
    level = identifier.QueryRetrieveLevel
    model = (
        PatientRootQueryRetrieveInformationModelFind
        if level == "PATIENT"
        else StudyRootQueryRetrieveInformationModelFind
    )
    assoc = associate(server, [build_context(model)], calling_aet, timeouts)
    rows = []
    try:
        for status, match in assoc.send_c_find(identifier, model):
            code = _status_code(status, server, "C-FIND")
            if code in (0xFF00, 0xFF01):
                rows.append(QueryRow(level, match))
            elif code != 0x0000:
                raise NetworkError(
                    f"C-FIND on {server.describe()} failed with status "
                    f"0x{code:04X} ({_meaning(QR_FIND_SERVICE_CLASS_STATUS, code)})."
                )
    finally:
        if assoc.is_established:
            assoc.release()
    LOGGER.info(
        "C-FIND %s level on %s: %d match(es)", level, server.called_aet, len(rows)
    )
    return rows


def _status_code(status: Dataset, server: Server, operation: str) -> int:
    if "Status" not in status:
        raise NetworkError(
            f"{operation} on {server.describe()} got no response: the association "
            "timed out or was aborted. Some servers abort when they do not know the "
            "calling AE title, so check that the server lists it; otherwise try "
            "again or raise the DIMSE timeout."
        )
    return int(status.Status)


def _meaning(table: dict, code: int) -> str:
    return table.get(code, ("", "unknown status"))[1] or "unknown status"


def find_instances(
    server: Server,
    study_instance_uid: str,
    series_instance_uid: str,
    calling_aet: str = DEFAULT_CALLING_AET,
    timeouts: Optional[Timeouts] = None,
) -> list:
    """List the instances of one series, sorted by Instance Number."""
    rows = find(
        server,
        "IMAGE",
        calling_aet,
        timeouts,
        study_instance_uid=study_instance_uid,
        series_instance_uid=series_instance_uid,
    )
    instances = []
    for row in rows:
        if not row.value("SOPInstanceUID") or not row.value("SOPClassUID"):
            LOGGER.warning("Skipped a C-FIND match without SOP Class or Instance UID")
            continue
        instances.append(
            SourceInstance(
                sop_class_uid=row.value("SOPClassUID"),
                sop_instance_uid=row.value("SOPInstanceUID"),
                instance_number=_integer(row.value("InstanceNumber")),
            )
        )
    instances.sort(key=lambda i: (i.instance_number is None, i.instance_number or 0))
    return instances


def _integer(text: str) -> Optional[int]:
    try:
        return int(text)
    except ValueError:
        return None


def retrieve_source_series(
    server: Server,
    study_instance_uid: str,
    series_instance_uid: str,
    method: str = "get",
    calling_aet: str = DEFAULT_CALLING_AET,
    move_port: int = DEFAULT_PORT,
    bind_address: str = "",
    timeouts: Optional[Timeouts] = None,
    accession_number: Optional[str] = None,
) -> SourceSeries:
    """Build the source series of a series on ``server`` without local files.

    Parameters
    ----------
    server : Server
        The PACS queried.
    study_instance_uid, series_instance_uid : str
        The chosen series.
    method : {"get", "move"}
        C-GET fetches the header over the query association. C-MOVE makes the
        server send it to this application's storage SCP, which listens on
        ``bind_address``:``move_port`` only during the retrieval. The server
        must list ``calling_aet`` as a move destination with that port.
    accession_number : str, optional
        Accession Number for new objects in place of the source's.

    Raises
    ------
    NetworkError
        When the series has no instances, the association or retrieval fails,
        or the server sends something other than the requested instance.
    """
    timeouts = timeouts or Timeouts()
    instances = find_instances(
        server, study_instance_uid, series_instance_uid, calling_aet, timeouts
    )
    if not instances:
        raise NetworkError(
            f"Series {series_instance_uid} of study {study_instance_uid} has no "
            f"instances on {server.describe()}. Check the UIDs with a query."
        )
    requested = _RequestedInstance(
        server, study_instance_uid, series_instance_uid, instances[0]
    )
    if method == "get":
        header = _retrieve_by_get(requested, calling_aet, timeouts)
    elif method == "move":
        header = _retrieve_by_move(
            requested, calling_aet, move_port, bind_address, timeouts
        )
    else:
        raise NetworkError(f"Unknown retrieve method {method!r}; use 'get' or 'move'.")

    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in header:
            delattr(header, keyword)
    LOGGER.info(
        "Retrieved the header of %s by C-%s and %d instance UID(s) from %s",
        requested.instance.sop_instance_uid,
        method.upper(),
        len(instances),
        server.called_aet,
    )
    return SourceSeries(header, instances, accession_number)


@dataclass
class _RequestedInstance:
    server: Server
    study_instance_uid: str
    series_instance_uid: str
    instance: SourceInstance

    def identifier(self) -> Dataset:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "IMAGE"
        identifier.StudyInstanceUID = self.study_instance_uid
        identifier.SeriesInstanceUID = self.series_instance_uid
        identifier.SOPInstanceUID = self.instance.sop_instance_uid
        return identifier

    def check(self, dataset: Dataset) -> Optional[str]:
        """Return why ``dataset`` is not the requested instance, or None."""
        if str(dataset.get("StudyInstanceUID", "")) != self.study_instance_uid:
            return "it belongs to another study"
        if str(dataset.get("SOPInstanceUID", "")) != self.instance.sop_instance_uid:
            return "it is not the requested instance"
        return None


class _Receiver:
    """C-STORE handler that keeps the one requested instance."""

    def __init__(
        self, requested: _RequestedInstance, allowed_addresses: Optional[set] = None
    ):
        self.requested = requested
        self.allowed_addresses = allowed_addresses
        self.dataset: Optional[Dataset] = None
        self.lock = threading.Lock()

    def __call__(self, event) -> int:
        requestor = event.assoc.requestor
        if self.allowed_addresses is not None:
            calling = requestor.ae_title.strip()
            if calling != self.requested.server.called_aet:
                LOGGER.warning(
                    "Rejected C-STORE from AE title %s: expected %s",
                    calling,
                    self.requested.server.called_aet,
                )
                return 0x0124
            if requestor.address not in self.allowed_addresses:
                LOGGER.warning(
                    "Rejected C-STORE from %s: %s resolves to %s",
                    requestor.address,
                    self.requested.server.host,
                    ", ".join(sorted(self.allowed_addresses)),
                )
                return 0x0124
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        problem = self.requested.check(dataset)
        if problem:
            LOGGER.warning(
                "Rejected C-STORE of %s from %s: %s",
                dataset.get("SOPInstanceUID", "?"),
                self.requested.server.called_aet,
                problem,
            )
            return 0xA900
        with self.lock:
            self.dataset = dataset
        LOGGER.info("Received %s", dataset.SOPInstanceUID)
        return 0x0000


def _storage_context(sop_class_uid: str):
    return build_context(sop_class_uid, ALL_TRANSFER_SYNTAXES)


def _retrieve_by_get(
    requested: _RequestedInstance, calling_aet: str, timeouts: Timeouts
):
    server = requested.server
    sop_class = requested.instance.sop_class_uid
    receiver = _Receiver(requested)
    contexts = [
        build_context(StudyRootQueryRetrieveInformationModelGet),
        _storage_context(sop_class),
    ]
    assoc = associate(
        server,
        contexts,
        calling_aet,
        timeouts,
        ext_neg=[build_role(sop_class, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, receiver)],
    )
    try:
        responses = assoc.send_c_get(
            requested.identifier(), StudyRootQueryRetrieveInformationModelGet
        )
        _final_status(responses, server, "C-GET", QR_GET_SERVICE_CLASS_STATUS)
    finally:
        if assoc.is_established:
            assoc.release()
    return _received(receiver, server, "C-GET")


def _retrieve_by_move(requested, calling_aet, move_port, bind_address, timeouts):
    server = requested.server
    receiver = _Receiver(requested, _resolve_addresses(server.host))
    scp = _make_ae(calling_aet, timeouts)
    scp.add_supported_context(requested.instance.sop_class_uid, ALL_TRANSFER_SYNTAXES)
    scp.require_calling_aet = [server.called_aet]
    # Only associations addressed to this application's own AE title.
    scp.require_called_aet = True
    try:
        listener = scp.start_server(
            (bind_address, move_port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, receiver)],
        )
    except OSError as exc:
        raise NetworkError(
            f"Failed to listen on port {move_port} for the C-MOVE from "
            f"{server.describe()}: {exc}. Free the port or change this "
            "application's port in the settings (and on the server)."
        )
    LOGGER.info(
        "Storage SCP %s listening on port %d for the C-MOVE", calling_aet, move_port
    )
    try:
        assoc = associate(
            server,
            [build_context(StudyRootQueryRetrieveInformationModelMove)],
            calling_aet,
            timeouts,
        )
        try:
            responses = assoc.send_c_move(
                requested.identifier(),
                calling_aet,
                StudyRootQueryRetrieveInformationModelMove,
            )
            _final_status(
                responses, server, "C-MOVE", QR_MOVE_SERVICE_CLASS_STATUS, calling_aet
            )
        finally:
            if assoc.is_established:
                assoc.release()
    finally:
        listener.shutdown()
        LOGGER.info("Storage SCP on port %d stopped", move_port)
    return _received(receiver, server, "C-MOVE")


def _resolve_addresses(host: str) -> set:
    try:
        return {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as exc:
        raise NetworkError(f"The host {host!r} does not resolve ({exc}).")


def _final_status(responses, server, operation, table, destination=None) -> None:
    code = None
    comment = ""
    for status, _ in responses:
        code = _status_code(status, server, operation)
        if code in (0xFF00, 0xFF01):
            continue
        comment = str(status.get("ErrorComment", "") or "")
        break
    if code in (0x0000, 0xB000):
        if code == 0xB000:
            LOGGER.warning(
                "%s from %s finished with warning 0xB000", operation, server.describe()
            )
        return
    meaning = _meaning(table, code) if code is not None else "no response"
    if comment:
        meaning += f": {comment}"
    advice = ""
    if destination:
        # Servers report an unknown destination as 0xA801 or, like Orthanc
        # 1.10, as a generic 0xC000, so the advice covers every failure.
        advice = (
            f" Check that the server lists the move destination {destination} with "
            "this computer's address and port, or retrieve with C-GET."
        )
    raise NetworkError(
        f"{operation} from {server.describe()} failed with status "
        f"0x{code or 0:04X} ({meaning}).{advice}"
    )


def _received(receiver: _Receiver, server: Server, operation: str) -> Dataset:
    if receiver.dataset is None:
        raise NetworkError(
            f"{operation} from {server.describe()} finished, but the requested "
            f"instance {receiver.requested.instance.sop_instance_uid} did not arrive. "
            "Check the server's log."
        )
    return receiver.dataset
