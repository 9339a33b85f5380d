"""DICOMweb: STOW-RS to store objects and QIDO-RS to query, with dicomweb-client.

A server's ``dicomweb_url`` is the service base URL (for Orthanc,
``http://host:8042/dicom-web``). Authentication is HTTP basic or a bearer
token, with the password or token read from the environment variable the
server names, so no secret is stored in the settings file. HTTPS uses the
server's TLS options: its CA file, and an optional client certificate.
"""

from __future__ import annotations

import inspect
import logging
import os
from pathlib import Path
from typing import Iterable, Optional

import pydicom
from pydicom.dataset import Dataset

from Media2DICOMLib.errors import NetworkError, SettingsError
from Media2DICOMLib.network import (
    FAILURE,
    NOT_SENT,
    SUCCESS,
    WARNING,
    StoreResult,
    collect_files,
    read_file_header,
    status_message,
)
from Media2DICOMLib.progress import ProgressCallback, progress_or_default
from Media2DICOMLib.query import QueryRow, build_identifier
from Media2DICOMLib.settings import Server, Timeouts

LOGGER = logging.getLogger(__name__)


def _import_client():
    try:
        import requests
        from dicomweb_client.api import DICOMwebClient
    except ImportError as exc:
        raise NetworkError(
            f"DICOMweb needs the packages dicomweb-client and requests ({exc}). "
            "Install them with: pip install dicomweb-client"
        )
    return requests, DICOMwebClient


def make_session(server: Server):
    """Build the requests session with the server's authentication and TLS.

    Raises
    ------
    SettingsError
        When the server has no DICOMweb URL, or the environment variable that
        should contain its secret is not set.
    """
    requests, _ = _import_client()
    if not server.dicomweb_url:
        raise SettingsError(
            f"The server {server.name!r} has no DICOMweb URL. Set one with "
            "'media2dicom servers edit NAME --dicomweb-url URL'."
        )
    session = requests.Session()
    if server.dicomweb_auth != "none":
        variable = server.dicomweb_secret_env or ""
        secret = os.environ.get(variable)
        if not secret:
            raise SettingsError(
                f"The environment variable {variable!r} with the DICOMweb "
                f"{'password' if server.dicomweb_auth == 'basic' else 'token'} of "
                f"{server.name!r} is not set. Set it before sending."
            )
        if server.dicomweb_auth == "basic":
            session.auth = (server.dicomweb_username, secret)
        else:
            session.headers["Authorization"] = f"Bearer {secret}"
    if server.tls is not None:
        session.mount("https://", _tls_adapter(requests, server))
    return session


def _tls_adapter(requests, server: Server):
    """Return a transport adapter that always uses the server's TLS options.

    requests lets REQUESTS_CA_BUNDLE and CURL_CA_BUNDLE override a session's
    ``verify`` (requests 2.x), so the configured CA file is applied here, for
    every HTTPS request of the session.
    """
    options = server.tls
    if options.verify:
        verify = os.path.expanduser(options.ca_file)
    else:
        LOGGER.warning("HTTPS certificate verification is off for %s", server.name)
        verify = False
    cert = None
    if options.cert_file:
        cert = (
            os.path.expanduser(options.cert_file),
            os.path.expanduser(options.key_file),
        )

    class TLSAdapter(requests.adapters.HTTPAdapter):
        def send(self, request, **kwargs):
            kwargs["verify"] = verify
            if cert is not None:
                kwargs["cert"] = cert
            return super().send(request, **kwargs)

    return TLSAdapter()


def _client(server: Server, timeouts: Optional[Timeouts] = None):
    _, DICOMwebClient = _import_client()
    timeouts = timeouts or Timeouts()
    session = make_session(server)
    options = {"url": server.dicomweb_url.rstrip("/"), "session": session}
    # Older dicomweb-client releases have no timeout argument and then wait
    # without limit; releases with it default to 20 s for connect and read.
    if "timeout" in inspect.signature(DICOMwebClient.__init__).parameters:
        options["timeout"] = (timeouts.connect, timeouts.dimse)
    client = DICOMwebClient(**options)
    # The outbox retries and logs failed objects, so the client's own retries
    # (up to 5 attempts with exponential waits) would only delay the report.
    client.set_http_retry_params(retry=False)
    return client


def store_instances(
    server: Server,
    paths: Iterable,
    progress: Optional[ProgressCallback] = None,
    timeouts: Optional[Timeouts] = None,
) -> list:
    """Store DICOM files on ``server`` with STOW-RS, one request per object.

    One request per object bounds memory use, because dicomweb-client encodes
    each request in memory, and gives a clear outcome per object. Returns one
    :class:`~Media2DICOMLib.network.StoreResult` per file, like C-STORE;
    ``status`` is the Failure Reason or Warning Reason of the STOW-RS response,
    or None.
    """
    requests, _ = _import_client()
    report = progress_or_default(progress)
    client = _client(server, timeouts)
    headers = [read_file_header(path) for path in collect_files(paths)]
    results = []
    for index, header in enumerate(headers, start=1):
        try:
            dataset = pydicom.dcmread(header.path)
            response = client.store_instances([dataset])
            result = _result_from_response(server, header, response)
        except requests.exceptions.HTTPError as exc:
            result = _http_failure(server, header, exc)
        except requests.exceptions.RequestException as exc:
            LOGGER.error("STOW-RS to %s failed: %s", server.dicomweb_url, exc)
            result = StoreResult(
                header.path,
                header.sop_class_uid,
                header.sop_instance_uid,
                None,
                None,
                NOT_SENT,
                f"STOW-RS to {server.dicomweb_url} failed: {exc}. The file was not "
                f"sent and is still at {header.path}.",
            )
        results.append(result)
        report(index, len(headers), f"{result.category}: {header.path.name}")
    return results


def _result_from_response(server: Server, header, response: Dataset) -> StoreResult:
    uid = header.sop_instance_uid
    for item in response.get("FailedSOPSequence", []):
        if str(item.get("ReferencedSOPInstanceUID", "")) == uid:
            code = int(item.get("FailureReason", 0xC000))
            _, meaning = status_message(code)
            message = (
                f"{server.dicomweb_url} rejected the object with failure reason "
                f"0x{code:04X} ({meaning}). The file is still at {header.path}."
            )
            LOGGER.warning("STOW-RS %s: failure 0x%04X", uid, code)
            return _result(header, code, FAILURE, message)
    for item in response.get("ReferencedSOPSequence", []):
        if str(item.get("ReferencedSOPInstanceUID", "")) == uid:
            if "WarningReason" in item:
                code = int(item.WarningReason)
                _, meaning = status_message(code)
                message = (
                    f"Stored on {server.dicomweb_url} with warning 0x{code:04X} "
                    f"({meaning})."
                )
                LOGGER.warning("STOW-RS %s: warning 0x%04X", uid, code)
                return _result(header, code, WARNING, message)
            LOGGER.info("STOW-RS %s to %s: success", uid, server.dicomweb_url)
            return _result(header, 0, SUCCESS, f"Stored on {server.dicomweb_url}.")
    message = (
        f"The STOW-RS response of {server.dicomweb_url} does not list the object, "
        f"so it may not be stored. The file is still at {header.path}."
    )
    LOGGER.error("STOW-RS %s: not in the response", uid)
    return _result(header, None, FAILURE, message)


def _http_failure(server: Server, header, error) -> StoreResult:
    response = getattr(error, "response", None)
    code = response.status_code if response is not None else None
    reason = response.reason if response is not None else str(error)
    advice = {
        401: " Check the user name and the password or token.",
        403: " The account may not store objects on this server.",
        409: " The server rejected the object; see its log for the reason.",
    }.get(code, "")
    message = (
        f"STOW-RS to {server.dicomweb_url} failed with HTTP {code} ({reason})."
        f"{advice} The file is still at {header.path}."
    )
    LOGGER.error("STOW-RS %s: HTTP %s %s", header.sop_instance_uid, code, reason)
    return _result(header, None, FAILURE, message)


def _result(header, status, category, message) -> StoreResult:
    return StoreResult(
        Path(header.path),
        header.sop_class_uid,
        header.sop_instance_uid,
        header.transfer_syntax_uid,
        status,
        category,
        message,
    )


def search(
    server: Server,
    level: str = "STUDY",
    timeouts: Optional[Timeouts] = None,
    **filters,
) -> list:
    """Query ``server`` with QIDO-RS and return :class:`~Media2DICOMLib.query.QueryRow`.

    Takes the filters of :func:`Media2DICOMLib.query.build_identifier`.
    QIDO-RS has no patient level, so ``level`` is study, series or image.

    Raises
    ------
    NetworkError
        When the request fails or the level is not supported.
    """
    requests, _ = _import_client()
    identifier = build_identifier(level, **filters)
    level = identifier.QueryRetrieveLevel
    if level == "PATIENT":
        raise NetworkError(
            "QIDO-RS has no patient level. Query studies with --patient-id or "
            "--patient-name instead."
        )
    study_uid = filters.get("study_instance_uid")
    series_uid = filters.get("series_instance_uid")
    search_filters = {
        element.keyword: str(element.value)
        for element in identifier
        if element.value not in (None, "")
        and element.keyword not in ("QueryRetrieveLevel", "SpecificCharacterSet")
        and element.keyword not in ("StudyInstanceUID", "SeriesInstanceUID")
    }
    fields = [element.keyword for element in identifier if element.value in (None, "")]
    client = _client(server, timeouts)
    try:
        if level == "STUDY":
            if study_uid:
                search_filters["StudyInstanceUID"] = study_uid
            matches = client.search_for_studies(
                search_filters=search_filters, fields=fields
            )
        elif level == "SERIES":
            matches = client.search_for_series(
                study_instance_uid=study_uid,
                search_filters=search_filters,
                fields=fields,
            )
        else:
            matches = client.search_for_instances(
                study_instance_uid=study_uid,
                series_instance_uid=series_uid,
                search_filters=search_filters,
                fields=fields,
            )
    except requests.exceptions.RequestException as exc:
        raise NetworkError(
            f"QIDO-RS query on {server.dicomweb_url} failed: {exc}. Check the URL "
            "and the credentials."
        )
    rows = [QueryRow(level, Dataset.from_json(match)) for match in matches]
    LOGGER.info("QIDO-RS %s level on %s: %d match(es)", level, server.name, len(rows))
    return rows
