"""Faulty DICOM peers on 127.0.0.1 that fault_scp.py does not provide.

:class:`RawFaultServer` speaks just enough of the DICOM upper layer over a
plain TCP socket to reject an association with any result, source and reason,
or to close the connection at a chosen point. :class:`BrokenStoreSCP` is a
pynetdicom storage SCP that stalls, aborts or drops the connection during a
C-STORE. Every peer stops when the test calls ``stop()``.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification

# PDU types of the DICOM upper layer (PS3.8 section 9.3).
A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_RJ = 0x03

# Wait before A-ASSOCIATE-RJ. Without it, 5 % of 300 rejections on a loaded
# 2-CPU machine reached pynetdicom 3.0.4 callers as aborts.
REPLY_DELAY_SECONDS = 0.2

# Modes of RawFaultServer.
REJECT = "reject"
CLOSE_ON_CONNECT = "close on connect"
CLOSE_AFTER_REQUEST = "close after request"

# Modes of BrokenStoreSCP.
STALL_BEFORE_RESPONSE = "stall before response"
ABORT_MIDWAY = "abort midway"
CLOSE_MIDWAY = "close midway"
CLOSE_AFTER_ACCEPT = "close after accept"
CLOSE_BEFORE_RESPONSE = "close before response"
CLOSE_ON_RELEASE = "close on release"
STALL_ON_RELEASE = "stall on release"


class RawFaultServer:
    """A TCP server that fails the association request in one fixed way.

    ``mode`` is REJECT (send A-ASSOCIATE-RJ with ``result``, ``source`` and
    ``reason``, then wait for the client to close), CLOSE_ON_CONNECT (close as soon as the client
    connects) or CLOSE_AFTER_REQUEST (read the A-ASSOCIATE-RQ, then close
    without a reply). ``requests`` counts the association requests read.
    """

    def __init__(
        self, mode: str, result: int = 1, source: int = 1, reason: int = 1
    ) -> None:
        self.mode = mode
        self.rejection = struct.pack(
            ">BBIBBBB", A_ASSOCIATE_RJ, 0, 4, 0, result, source, reason
        )
        self.requests = 0
        self.lock = threading.Lock()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        # accept() wakes up now and then to see whether stop() was called.
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                connection, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return  # the listener was closed by stop()
            # One thread per connection, so a client that is slow to close
            # does not delay the next association request.
            threading.Thread(
                target=self._serve_one, args=(connection,), daemon=True
            ).start()

    def _serve_one(self, connection: socket.socket) -> None:
        with connection:
            connection.settimeout(10)
            try:
                self._handle(connection)
            except OSError:
                pass  # the client gave up first, which is what it may do

    def _handle(self, connection: socket.socket) -> None:
        if self.mode == CLOSE_ON_CONNECT:
            return
        pdu_type, length = _read_pdu_header(connection)
        _read_exactly(connection, length)
        if pdu_type == A_ASSOCIATE_RQ:
            with self.lock:
                self.requests += 1
        if self.mode == REJECT:
            # pynetdicom 3.0.4 reports a rejection as an abort when the
            # A-ASSOCIATE-RJ arrives before its ACSE thread checks the socket,
            # so the reply waits as a busy server would.
            time.sleep(REPLY_DELAY_SECONDS)
            connection.sendall(self.rejection)
            # After A-ASSOCIATE-RJ the requestor closes the connection (PS3.8
            # state Sta13), so wait for that instead of closing first.
            while connection.recv(4096):
                pass

    def stop(self) -> None:
        self.stopped.set()
        self.listener.close()
        self.thread.join(timeout=10)


def _read_pdu_header(connection: socket.socket):
    header = _read_exactly(connection, 6)
    pdu_type, _, length = struct.unpack(">BBI", header)
    return pdu_type, length


def _read_exactly(connection: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = connection.recv(min(size - len(data), 65536))
        if not chunk:
            raise ConnectionError("the client closed the connection")
        data += chunk
    return data


class BrokenStoreSCP:
    """A pynetdicom storage SCP that breaks the association in one way.

    STALL_BEFORE_RESPONSE delays each C-STORE response until ``release()`` or
    ``stall_seconds`` pass. ABORT_MIDWAY sends A-ABORT and CLOSE_MIDWAY closes
    the socket after ``pdus_before_fault`` P-DATA PDUs of a C-STORE arrived.
    CLOSE_AFTER_ACCEPT closes the socket right after the association is
    accepted. CLOSE_BEFORE_RESPONSE closes it once the whole object arrived,
    before the response. CLOSE_ON_RELEASE closes it and STALL_ON_RELEASE
    stays silent when the A-RELEASE-RQ arrives, after a successful C-STORE.
    ``stored`` lists the SOP Instance UIDs whose C-STORE
    handler ran.
    """

    def __init__(
        self,
        mode: str,
        aet: str = "BROKENSCP",
        stall_seconds: float = 60.0,
        pdus_before_fault: int = 3,
    ) -> None:
        self.mode = mode
        self.aet = aet
        self.stall_seconds = stall_seconds
        self.pdus_before_fault = pdus_before_fault
        self.stored = []
        self.data_pdus = 0
        self.faults = 0
        self.unblock = threading.Event()

        ae = AE(ae_title=aet)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        handlers = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_PDU_RECV, self._on_pdu),
            (evt.EVT_ACCEPTED, self._on_accepted),
        ]
        self.server = ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=handlers
        )
        self.port = self.server.socket.getsockname()[1]

    def _on_accepted(self, event) -> None:
        if self.mode == CLOSE_AFTER_ACCEPT:
            self._close(event.assoc)

    def _on_pdu(self, event) -> None:
        pdu_name = type(event.pdu).__name__
        if pdu_name == "A_RELEASE_RQ" and self.mode == CLOSE_ON_RELEASE:
            self._close(event.assoc)
        elif pdu_name == "A_RELEASE_RQ" and self.mode == STALL_ON_RELEASE:
            # Blocking the handler blocks this association's reactor, so no
            # A-RELEASE-RP goes out until release() or stall_seconds.
            self.faults += 1
            self.unblock.wait(self.stall_seconds)
        if pdu_name != "P_DATA_TF":
            return
        self.data_pdus += 1
        if self.data_pdus != self.pdus_before_fault:
            return
        if self.mode == ABORT_MIDWAY:
            self.faults += 1
            # abort() waits for the reactor thread that runs this handler,
            # which deadlocks in pynetdicom 2.1, so another thread calls it.
            threading.Thread(target=event.assoc.abort, daemon=True).start()
        elif self.mode == CLOSE_MIDWAY:
            self._close(event.assoc)

    def _on_store(self, event) -> int:
        self.stored.append(str(event.request.AffectedSOPInstanceUID))
        if self.mode == STALL_BEFORE_RESPONSE:
            self.faults += 1
            self.unblock.wait(self.stall_seconds)
        elif self.mode == CLOSE_BEFORE_RESPONSE:
            self._close(event.assoc)
        return 0x0000

    def _close(self, assoc) -> None:
        """Shut the TCP connection down with no A-RELEASE and no A-ABORT."""
        self.faults += 1
        try:
            assoc.dul.socket.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed by the client

    def release(self) -> None:
        """Let stalled handlers return, so the server can stop."""
        self.unblock.set()

    def stop(self) -> None:
        self.release()
        self.server.shutdown()


def server_entry(port: int, aet: str, name: str = "faulty"):
    """Return the settings Server entry of a peer on 127.0.0.1."""
    from Media2DICOMLib.settings import Server

    return Server(name=name, host="127.0.0.1", port=port, called_aet=aet)
