"""Associations with a PACS: C-ECHO and C-STORE of DICOM files.

Sending proposes exactly the SOP classes and transfer syntaxes of the files
(learnt from their headers), sends each file from disk in chunks when its
transfer syntax was accepted as it is, and reports one :class:`StoreResult`
per file. Every error message names the server by AE title, host and port.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom import AE, _config, evt
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS, code_to_category

from Media2DICOMLib.errors import Media2DICOMError, NetworkError
from Media2DICOMLib.progress import ProgressCallback, progress_or_default
from Media2DICOMLib.settings import Server, Timeouts, TLSOptions

LOGGER = logging.getLogger(__name__)

DEFAULT_CALLING_AET = "MEDIA2DICOM"
# An association may carry at most 128 presentation contexts (PS3.8 9.3.2.2,
# odd context IDs 1 to 255).
MAX_CONTEXTS = 128

# Categories of StoreResult.category.
SUCCESS = "success"
WARNING = "warning"
FAILURE = "failure"
NOT_SENT = "not sent"

# pynetdicom logs C-FIND, C-GET and C-MOVE identifiers (patient names and IDs)
# at INFO. Patient data must not appear in logs above DEBUG, so the identifier
# logs are switched off for the whole process.
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False

# pynetdicom's send-from-file switch is a module global, so concurrent sends
# in one process take turns changing it.
_CHUNKED_SEND_LOCK = threading.Lock()

__all__ = [
    "EchoResult",
    "StoreResult",
    "Server",
    "TLSOptions",
    "Timeouts",
    "echo",
    "send_files",
    "associate",
    "ssl_context_for",
]


@dataclass
class EchoResult:
    """Outcome of one C-ECHO.

    ``reason`` is empty on success and otherwise one sentence: the connection
    was refused, the association was rejected (with the server's reason),
    timed out or was aborted, or the C-ECHO status was not success.
    """

    ok: bool
    seconds: float
    reason: str = ""
    status: Optional[int] = None


@dataclass
class StoreResult:
    """Outcome of the C-STORE of one file.

    ``status`` is the C-STORE status code, or None when no response arrived.
    ``category`` is "success", "warning", "failure" or "not sent".
    ``message`` is a plain sentence with the outcome and the status meaning.
    """

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_used: Optional[str]
    status: Optional[int]
    category: str
    message: str

    @property
    def stored(self) -> bool:
        """True when the server kept the object (success or warning)."""
        return self.category in (SUCCESS, WARNING)


@dataclass
class FileHeader:
    """SOP class, SOP instance and transfer syntax of one file, read from its header.

    ``has_file_meta`` is False for raw dataset files, which are re-encoded when
    sent instead of streamed.
    """

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    has_file_meta: bool


class _AssociationFailed(Exception):
    def __init__(self, message: str, no_accepted_contexts: bool = False) -> None:
        super().__init__(message)
        self.no_accepted_contexts = no_accepted_contexts


def ssl_context_for(server: Server) -> Optional[ssl.SSLContext]:
    """Build the client TLS context of ``server``, or None without TLS.

    The server certificate is checked against the configured CA file and the
    host name unless the server's TLS options turn verification off.
    """
    options = server.tls
    if options is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        if options.verify and options.ca_file:
            context.load_verify_locations(cafile=os.path.expanduser(options.ca_file))
        elif options.verify:
            # Without a CA file the operating system's trusted certificates
            # verify the server, as for any TLS client.
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        else:
            LOGGER.warning(
                "TLS certificate verification is off for %s", server.describe()
            )
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if options.cert_file:
            context.load_cert_chain(
                os.path.expanduser(options.cert_file),
                os.path.expanduser(options.key_file),
            )
    except (OSError, ssl.SSLError) as exc:
        raise NetworkError(
            f"Failed to load the TLS certificates for {server.describe()}: {exc}. "
            "Check the ca_file, cert_file and key_file of this server."
        )
    return context


def _make_ae(calling_aet: str, timeouts: Timeouts) -> AE:
    ae = AE(ae_title=calling_aet)
    ae.connection_timeout = timeouts.connect
    ae.acse_timeout = timeouts.acse
    ae.dimse_timeout = timeouts.dimse
    ae.network_timeout = timeouts.network
    return ae


def associate(
    server: Server,
    contexts: Sequence,
    calling_aet: str = DEFAULT_CALLING_AET,
    timeouts: Optional[Timeouts] = None,
    ext_neg: Optional[list] = None,
    evt_handlers: Optional[list] = None,
):
    """Open an association with ``server`` proposing ``contexts``.

    Returns the established pynetdicom association.

    Raises
    ------
    NetworkError
        When the connection is refused or times out, the TLS handshake fails,
        or the association is rejected, aborted or gets no response. The message
        names the server and the reason.
    """
    timeouts = timeouts or Timeouts()
    ae = _make_ae(calling_aet, timeouts)
    ae.requested_contexts = list(contexts)
    try:
        return _associate(ae, server, calling_aet, timeouts, ext_neg, evt_handlers)
    except _AssociationFailed as exc:
        raise NetworkError(str(exc))


def _associate(ae, server, calling_aet, timeouts, ext_neg=None, evt_handlers=None):
    context = ssl_context_for(server)
    tls_args = None
    if context is not None:
        hostname = (server.tls.server_hostname or server.host) if server.tls else None
        tls_args = (context, hostname)

    received = []
    handlers = list(evt_handlers or [])
    handlers.append((evt.EVT_DATA_RECV, lambda event: received.append(True)))
    started = time.monotonic()
    assoc = ae.associate(
        server.host,
        server.port,
        ae_title=server.called_aet,
        ext_neg=ext_neg,
        evt_handlers=handlers,
        tls_args=tls_args,
    )
    elapsed = time.monotonic() - started
    if assoc.is_established:
        _log_association(server, calling_aet, assoc)
        _tune_transport(assoc)
        return assoc

    reason = _association_failure_reason(server, assoc, received, elapsed, timeouts)
    LOGGER.error(
        "Association %s -> %s failed: %s", calling_aet, server.describe(), reason
    )
    raise _AssociationFailed(
        f"Association with {server.describe()} failed: {reason}. "
        f"{_association_advice(server, calling_aet)}",
        no_accepted_contexts=reason.startswith(_NO_CONTEXTS),
    )


# P-DATA PDUs that may wait for the socket at once. pynetdicom's queue of PDUs
# to send is unbounded, so a chunked send from a file that reads faster than
# the network drains would otherwise hold the whole object in memory.
MAX_QUEUED_PDUS = 32


# Longer than the 1 ms that pynetdicom's association reactor sleeps per loop.
_REACTOR_SETTLE_SECONDS = 0.002


def _pause_reactor(assoc) -> None:
    """Make sure the association's reactor thread is blocked before a request.

    pynetdicom 3.0.4 pauses the reactor in send_c_store() by clearing
    ``_reactor_checkpoint`` and waiting for ``_is_paused``, but the flag can
    still be True from the previous pause while the reactor has woken up. With
    TCP_NODELAY the response can then arrive before the reactor pauses, and
    the reactor takes it as a request, so send_c_store() waits until the DIMSE
    timeout. Seeing the flag set twice, a reactor loop apart, rules that out.
    """
    checkpoint = getattr(assoc, "_reactor_checkpoint", None)
    if checkpoint is None or not hasattr(assoc, "_is_paused"):
        return
    checkpoint.clear()
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline and assoc.is_established:
        if assoc._is_paused:
            time.sleep(_REACTOR_SETTLE_SECONDS)
            if assoc._is_paused:
                return
        else:
            time.sleep(0.0001)


def _tune_transport(assoc) -> None:
    """Set TCP_NODELAY and bound the send queue of an established association.

    Without TCP_NODELAY and quick acknowledgements every small C-STORE waits
    for a delayed acknowledgement (about 40 ms on Linux), which caps a batch
    of small objects at about 20 per second.
    """
    association_socket = getattr(assoc.dul, "socket", None)
    raw_socket = getattr(association_socket, "socket", None)
    if raw_socket is not None:
        try:
            raw_socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            LOGGER.debug("Could not set TCP_NODELAY: %s", exc)
        if hasattr(socket, "TCP_QUICKACK"):
            _acknowledge_quickly(association_socket, raw_socket)

    dul = assoc.dul
    queue = getattr(dul, "to_provider_queue", None)
    if queue is None:
        return
    unbounded_send = dul.send_pdu

    def bounded_send(primitive) -> None:
        # The DUL thread never waits for itself, and a dead association does
        # not hold up the caller.
        if threading.current_thread() is not dul:
            while (
                queue.qsize() >= MAX_QUEUED_PDUS
                and dul.is_alive()
                and assoc.is_established
            ):
                time.sleep(0.0005)
        unbounded_send(primitive)

    dul.send_pdu = bounded_send


def _acknowledge_quickly(association_socket, raw_socket) -> None:
    """Turn on TCP_QUICKACK (Linux) before every read of the association.

    A peer without TCP_NODELAY (DCMTK storescp by default) writes its C-STORE
    response in two segments and delays the second until the first is
    acknowledged, while Linux delays that acknowledgement by about 40 ms. The
    kernel clears the option after use, so it is set again before each read.
    Measured on loopback against storescp 3.6.7: 48 ms per small object
    without it, 3 ms with it.
    """
    receive = association_socket.recv

    def receive_with_quick_ack(size):
        try:
            raw_socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        except OSError:
            pass
        return receive(size)

    association_socket.recv = receive_with_quick_ack


def _log_association(server: Server, calling_aet: str, assoc) -> None:
    accepted = ", ".join(
        f"{UID(cx.abstract_syntax).name} [{UID(cx.transfer_syntax[0]).name}]"
        for cx in assoc.accepted_contexts
    )
    LOGGER.info(
        "Association established: %s -> %s (host %s, port %d); accepted: %s",
        calling_aet,
        server.called_aet,
        server.host,
        server.port,
        accepted or "none",
    )


def _association_failure_reason(server, assoc, received, elapsed, timeouts) -> str:
    if assoc.is_rejected:
        primitive = assoc.acceptor.primitive
        if primitive is None:
            return "the server rejected the association"
        return (
            f"the server rejected the association ({primitive.result_str}, "
            f"source: {primitive.source_str}, reason: {primitive.reason_str})"
        )
    if not received:
        connection_reason = _diagnose_connection(server, timeouts)
        if connection_reason:
            return connection_reason
        # NOTE: a server that closes the connection late in the ACSE time
        # limit is reported as timed out, because the two look alike here.
        if elapsed >= timeouts.acse * 0.9:
            return (
                f"the server accepted the connection but sent no response within "
                f"{timeouts.acse:g} s (timed out)"
            )
        return "the server closed the connection without a response"
    if assoc.is_aborted and not assoc.accepted_contexts:
        if assoc.rejected_contexts or assoc.acceptor.primitive is not None:
            return (
                f"{_NO_CONTEXTS} "
                f"({_describe_contexts(assoc.requestor.requested_contexts)})"
            )
    return "the association was aborted"


_NO_CONTEXTS = "the server accepted none of the proposed presentation contexts"


def _describe_contexts(contexts) -> str:
    parts = []
    for cx in contexts:
        syntaxes = ", ".join(UID(ts).name for ts in cx.transfer_syntax)
        parts.append(f"{UID(cx.abstract_syntax).name} with {syntaxes}")
    return "; ".join(parts)


def _diagnose_connection(server: Server, timeouts: Timeouts) -> str:
    """Find out why no association data arrived, by connecting once more.

    Returns a reason when the TCP connection or TLS handshake fails, or an
    empty string when both work, so the server itself sent nothing.
    """
    try:
        sock = socket.create_connection(
            (server.host, server.port), timeout=timeouts.connect
        )
    except ConnectionRefusedError:
        return "the connection was refused (nothing listens on that port)"
    except socket.timeout:
        return f"the connection timed out after {timeouts.connect:g} s"
    except socket.gaierror as exc:
        return f"the host name does not resolve ({exc})"
    except OSError as exc:
        return f"the connection failed ({exc})"
    try:
        context = ssl_context_for(server)
        if context is not None:
            hostname = server.tls.server_hostname or server.host
            try:
                with context.wrap_socket(sock, server_hostname=hostname) as tls:
                    tls.settimeout(timeouts.connect)
            except ssl.SSLCertVerificationError as exc:
                return f"the TLS certificate of the server was not trusted ({exc})"
            except (ssl.SSLError, OSError) as exc:
                return f"the TLS handshake failed ({exc})"
    finally:
        sock.close()
    return ""


def _association_advice(server: Server, calling_aet: str) -> str:
    return (
        f"Check that the server runs, that it knows the calling AE title "
        f"{calling_aet!r}, and the called AE title, host, port and TLS settings."
    )


def echo(
    server: Server,
    calling_aet: str = DEFAULT_CALLING_AET,
    timeouts: Optional[Timeouts] = None,
) -> EchoResult:
    """Send a C-ECHO to ``server`` and time it.

    Network failures do not raise, because the result contains the reason.
    """
    timeouts = timeouts or Timeouts()
    ae = _make_ae(calling_aet, timeouts)
    ae.add_requested_context(Verification)
    started = time.monotonic()
    try:
        assoc = _associate(ae, server, calling_aet, timeouts)
    except _AssociationFailed as exc:
        return EchoResult(False, time.monotonic() - started, str(exc))
    except NetworkError as exc:
        LOGGER.error("C-ECHO to %s failed: %s", server.describe(), exc)
        return EchoResult(False, time.monotonic() - started, str(exc))
    try:
        status = assoc.send_c_echo()
    finally:
        _release(assoc)
    seconds = time.monotonic() - started
    if "Status" not in status:
        reason = (
            f"{server.describe()} sent no C-ECHO response within "
            f"{timeouts.dimse:g} s, or aborted the association"
        )
        LOGGER.error("C-ECHO failed: %s", reason)
        return EchoResult(False, seconds, reason)
    code = int(status.Status)
    if code != 0x0000:
        reason = f"{server.describe()} returned C-ECHO status 0x{code:04X}"
        LOGGER.error("C-ECHO failed: %s", reason)
        return EchoResult(False, seconds, reason, code)
    LOGGER.info("C-ECHO to %s succeeded in %.3f s", server.describe(), seconds)
    return EchoResult(True, seconds, "", code)


def _release(assoc) -> None:
    if assoc.is_established:
        assoc.release()


def read_file_header(path: Path) -> FileHeader:
    """Read SOP class, SOP instance and transfer syntax of ``path`` cheaply.

    Files with File Meta Information are read from it alone. Files without
    it are read up to the pixel data and are sent by re-encoding them.
    """
    try:
        meta = pydicom.filereader.read_file_meta_info(path)
    except Exception as exc:  # pydicom raises several types for non-DICOM bytes
        LOGGER.debug("No File Meta Information in %s: %s", path, exc)
        meta = Dataset()
    keys = ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID")
    if all(meta.get(k) for k in keys) and meta.get("TransferSyntaxUID"):
        return FileHeader(
            path,
            str(meta.MediaStorageSOPClassUID),
            str(meta.MediaStorageSOPInstanceUID),
            str(meta.TransferSyntaxUID),
            True,
        )
    try:
        dataset = pydicom.dcmread(
            path,
            force=True,
            stop_before_pixels=True,
            specific_tags=["SOPClassUID", "SOPInstanceUID"],
        )
        sop_class_uid = str(dataset.SOPClassUID)
        sop_instance_uid = str(dataset.SOPInstanceUID)
    except Exception as exc:  # any failure means it is not a sendable object
        raise NetworkError(
            f"The file {path} is not a DICOM object with a SOP Class UID and SOP "
            f"Instance UID ({exc}), so it cannot be sent. Remove it from the list."
        )
    implicit = dataset.is_implicit_VR if dataset.is_implicit_VR is not None else True
    syntax = pydicom.uid.ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    return FileHeader(path, sop_class_uid, sop_instance_uid, str(syntax), False)


def collect_files(paths: Iterable) -> list:
    """Expand files and folders into a file list.

    Folders are searched recursively, in sorted order, for files in the DICOM
    file format (``DICM`` after the 128-byte preamble); other files there are
    skipped. Files named directly are always kept.
    """
    files = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file())
            dicom = [p for p in found if _has_dicom_preamble(p)]
            if len(dicom) < len(found):
                LOGGER.info(
                    "Skipped %d file(s) in %s that are not DICOM files",
                    len(found) - len(dicom),
                    path,
                )
            files.extend(dicom)
        elif path.is_file():
            files.append(path)
        else:
            raise NetworkError(f"The file or folder {path} does not exist.")
    return files


def _has_dicom_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as stream:
            return stream.read(132)[128:] == b"DICM"
    except OSError:
        return False


def status_message(code: int) -> tuple:
    """Return (category, meaning) of a C-STORE status code."""
    category = code_to_category(code).lower()
    meaning = STORAGE_SERVICE_CLASS_STATUS.get(code, (None, ""))[1]
    if category not in (SUCCESS, WARNING):
        category = FAILURE
    if not meaning:
        meaning = {SUCCESS: "Success", WARNING: "Warning"}.get(category, "Unknown")
    return category, meaning


def send_files(
    server: Server,
    paths: Iterable,
    calling_aet: str = DEFAULT_CALLING_AET,
    timeouts: Optional[Timeouts] = None,
    progress: Optional[ProgressCallback] = None,
    allow_uncompressed_fallback: bool = True,
) -> list:
    """Send DICOM files to ``server`` with C-STORE.

    Parameters
    ----------
    server : Server
        The storage SCP.
    paths : iterable of paths
        DICOM files, or folders searched recursively.
    calling_aet : str, optional
        This application's AE title.
    timeouts : Timeouts, optional
        Time limits; the defaults of :class:`Timeouts` when None.
    progress : callable, optional
        ``progress(done, total, message)`` after each object.
    allow_uncompressed_fallback : bool, optional
        When the server accepts a JPEG object's SOP class only uncompressed,
        rewrite the object as Explicit VR Little Endian and send that.

    Returns
    -------
    list of StoreResult
        One per file, in the order given. Files that were not stored stay where
        they are, and the message states that.

    Raises
    ------
    NetworkError
        When a path does not exist or a file is not a DICOM object. Network
        failures do not raise: they are reported per file as "not sent".
    """
    timeouts = timeouts or Timeouts()
    report = progress_or_default(progress)
    headers = [read_file_header(path) for path in collect_files(paths)]
    results = {}
    total = len(headers)
    for batch in _batches(headers, allow_uncompressed_fallback):
        batch_results = _send_batch(
            server,
            batch,
            calling_aet,
            timeouts,
            allow_uncompressed_fallback,
            lambda result: _report(report, results, result, total, server),
        )
        for result in batch_results:
            results.setdefault(result.path, result)
    return [results[header.path] for header in headers]


def _report(report, results, result, total, server) -> None:
    results[result.path] = result
    report(
        len(results), total, f"{result.category}: {result.path.name} to {server.name}"
    )


def _contexts_for(header: FileHeader, allow_fallback: bool) -> list:
    """Return the (SOP class, transfer syntax) pairs to propose for ``header``."""
    pairs = [(header.sop_class_uid, header.transfer_syntax_uid)]
    if allow_fallback and _is_jpeg(header.transfer_syntax_uid):
        pairs.append((header.sop_class_uid, str(ExplicitVRLittleEndian)))
    return pairs


def _is_jpeg(transfer_syntax_uid: str) -> bool:
    # JPEG (ISO 10918) transfer syntaxes: 1.2.840.10008.1.2.4.50 to .70.
    prefix = "1.2.840.10008.1.2.4."
    if not transfer_syntax_uid.startswith(prefix):
        return False
    number = transfer_syntax_uid[len(prefix) :]
    return number.isdigit() and 50 <= int(number) <= 70


def _batches(headers: list, allow_fallback: bool):
    """Split files into groups whose contexts fit in one association."""
    batch, pairs = [], set()
    for header in headers:
        requested = set(_contexts_for(header, allow_fallback))
        if batch and len(pairs | requested) > MAX_CONTEXTS:
            yield batch
            batch, pairs = [], set()
        batch.append(header)
        pairs |= requested
    if batch:
        yield batch


def _send_batch(server, batch, calling_aet, timeouts, allow_fallback, on_result):
    pairs = []
    for header in batch:
        for pair in _contexts_for(header, allow_fallback):
            if pair not in pairs:
                pairs.append(pair)
    contexts = [build_context(sop_class, [syntax]) for sop_class, syntax in pairs]
    ae = _make_ae(calling_aet, timeouts)
    ae.requested_contexts = contexts
    try:
        assoc = _associate(ae, server, calling_aet, timeouts)
    except (_AssociationFailed, NetworkError) as exc:
        if not isinstance(exc, _AssociationFailed):
            LOGGER.error("Association with %s failed: %s", server.describe(), exc)
        results = []
        for header in batch:
            reason = str(exc)
            if getattr(exc, "no_accepted_contexts", False):
                reason = _unaccepted_reason(server, header, [], allow_fallback)
            result = _not_sent(header, reason)
            on_result(result)
            results.append(result)
        return results

    results = []
    try:
        for header in batch:
            if not assoc.is_established:
                result = _not_sent(
                    header,
                    f"The association with {server.describe()} ended before this "
                    "object was sent.",
                )
            else:
                result = _store_one(assoc, server, header, allow_fallback)
            on_result(result)
            results.append(result)
    finally:
        _release(assoc)
    return results


def _not_sent(header: FileHeader, reason: str) -> StoreResult:
    return StoreResult(
        path=header.path,
        sop_class_uid=header.sop_class_uid,
        sop_instance_uid=header.sop_instance_uid,
        transfer_syntax_used=None,
        status=None,
        category=NOT_SENT,
        message=f"{reason} The file was not sent and is still at {header.path}.",
    )


def _accepted_syntaxes(assoc, sop_class_uid: str) -> list:
    return [
        str(cx.transfer_syntax[0])
        for cx in assoc.accepted_contexts
        if str(cx.abstract_syntax) == sop_class_uid
    ]


def _store_one(assoc, server: Server, header: FileHeader, allow_fallback: bool):
    accepted = _accepted_syntaxes(assoc, header.sop_class_uid)
    if header.transfer_syntax_uid in accepted:
        syntax = header.transfer_syntax_uid
        payload = header.path if header.has_file_meta else None
    elif allow_fallback and str(ExplicitVRLittleEndian) in accepted:
        syntax = str(ExplicitVRLittleEndian)
        payload = None
    else:
        reason = _unaccepted_reason(server, header, accepted, allow_fallback)
        LOGGER.error("Not sent %s: %s", header.sop_instance_uid, reason)
        return _not_sent(header, reason)

    try:
        if payload is not None:
            status = _send_from_file(assoc, header.path)
        elif syntax == header.transfer_syntax_uid:
            _pause_reactor(assoc)
            status = assoc.send_c_store(_dataset_with_meta(header))
        else:
            status = _send_uncompressed(assoc, header.path)
    except RuntimeError as exc:
        # pynetdicom raises RuntimeError when the association ended (for
        # example aborted by the peer) between objects.
        LOGGER.error(
            "C-STORE of %s to %s not sent: %s",
            header.sop_instance_uid,
            server.describe(),
            exc,
        )
        return _not_sent(
            header,
            f"The association with {server.describe()} ended before this object "
            "was sent.",
        )
    except (ValueError, AttributeError, OSError, Media2DICOMError) as exc:
        LOGGER.error(
            "C-STORE of %s to %s failed before sending: %s",
            header.sop_instance_uid,
            server.describe(),
            exc,
        )
        return _not_sent(header, f"Failed to send to {server.describe()}: {exc}.")
    return _store_result(server, header, syntax, status)


def _dataset_with_meta(header: FileHeader) -> Dataset:
    """Read a file that lacks File Meta Information and give it some.

    pynetdicom needs the transfer syntax of a dataset to choose its context,
    and a raw dataset file carries none.
    """
    dataset = pydicom.dcmread(header.path, force=True)
    if not dataset.file_meta.get("TransferSyntaxUID"):
        dataset.file_meta = FileMetaDataset()
        dataset.file_meta.TransferSyntaxUID = header.transfer_syntax_uid
    return dataset


def _unaccepted_reason(server, header, accepted, allow_fallback) -> str:
    offered = ", ".join(UID(ts).name for ts in accepted) or "none"
    reason = (
        f"{server.describe()} does not accept {UID(header.sop_class_uid).name} in "
        f"{UID(header.transfer_syntax_uid).name} (transfer syntaxes accepted for "
        f"this SOP class: {offered})."
    )
    if _is_jpeg(header.transfer_syntax_uid) and not allow_fallback:
        reason += " Allow the uncompressed fallback to send it uncompressed."
    return reason


def _send_from_file(assoc, path: Path) -> Dataset:
    """Send ``path`` in chunks straight from the file, without decoding it."""
    with _CHUNKED_SEND_LOCK:
        previous = _config.STORE_SEND_CHUNKED_DATASET
        _config.STORE_SEND_CHUNKED_DATASET = True
        try:
            _pause_reactor(assoc)
            return assoc.send_c_store(path)
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = previous


def _send_uncompressed(assoc, path: Path) -> Dataset:
    """Rewrite a JPEG object as Explicit VR Little Endian and send the copy.

    The Secondary Capture writer owns this conversion, because it keeps Lossy
    Image Compression "01" and sets Photometric Interpretation to RGB. It is
    imported only when a server needs it.
    """
    try:
        from Media2DICOMLib.secondary_capture import decompress_to_explicit_little
    except ImportError as exc:
        raise NetworkError(
            "The server accepts this object only uncompressed, but this "
            f"installation cannot rewrite JPEG objects uncompressed ({exc})"
        )
    with tempfile.TemporaryDirectory(prefix="media2dicom-") as folder:
        target = Path(folder) / "uncompressed.dcm"
        decompress_to_explicit_little(path, target)
        LOGGER.info("Sending %s uncompressed from the rewritten copy", path)
        return _send_from_file(assoc, target)


def _store_result(server, header, syntax, status) -> StoreResult:
    syntax_name = UID(syntax).name
    if "Status" not in status:
        message = (
            f"{server.describe()} sent no C-STORE response (the association "
            "timed out or was aborted); the object may or may not be stored. "
            f"The file is still at {header.path}."
        )
        LOGGER.error("C-STORE %s: no response", header.sop_instance_uid)
        return StoreResult(
            header.path,
            header.sop_class_uid,
            header.sop_instance_uid,
            syntax,
            None,
            NOT_SENT,
            message,
        )

    code = int(status.Status)
    category, meaning = status_message(code)
    comment = str(status.get("ErrorComment", "") or "")
    detail = f"status 0x{code:04X} ({meaning}{': ' + comment if comment else ''})"
    if category == SUCCESS:
        message = f"Stored on {server.describe()} as {syntax_name}."
    elif category == WARNING:
        message = (
            f"Stored on {server.describe()} as {syntax_name} with warning {detail}."
        )
    else:
        message = (
            f"{server.describe()} rejected the object with failure {detail}. "
            f"The file is still at {header.path}."
        )
    log = LOGGER.info if category == SUCCESS else LOGGER.warning
    log(
        "C-STORE %s to %s: %s, %s",
        header.sop_instance_uid,
        server.called_aet,
        category,
        detail,
    )
    return StoreResult(
        header.path,
        header.sop_class_uid,
        header.sop_instance_uid,
        syntax,
        code,
        category,
        message,
    )
