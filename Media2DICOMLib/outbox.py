"""Send queue in the cache directory that survives failures and crashes.

Every object is copied into ``<cache>/outbox/<server key>/`` before it is
sent, as ``<SOP Instance UID>.dcm`` beside a ``<SOP Instance UID>.json`` state
file. An entry leaves the outbox only when the server returns a success or
warning status. Any other outcome keeps it, with the reason and the time of the
last attempt. A retry sends the same file, so the server receives the same SOP
Instance UID however often the process was killed.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Optional

from Media2DICOMLib.errors import NetworkError, OutboxError
from Media2DICOMLib.network import (
    DEFAULT_CALLING_AET,
    StoreResult,
    collect_files,
    read_file_header,
    send_files,
)
from Media2DICOMLib.progress import ProgressCallback
from Media2DICOMLib.settings import (
    Server,
    Timeouts,
    TLSOptions,
    write_text_atomically,
)

LOGGER = logging.getLogger(__name__)

OUTBOX_FOLDER_NAME = "outbox"
# Transports of an entry: C-STORE, or STOW-RS to the server's DICOMweb URL.
TRANSPORTS = ("dimse", "dicomweb")


@dataclass
class OutboxEntry:
    """One object waiting to be sent to one server."""

    sop_instance_uid: str
    sop_class_uid: str
    server: Server
    path: Path
    source_path: str
    queued_at: str
    attempts: int = 0
    last_attempt: Optional[str] = None
    last_reason: str = ""
    transport: str = "dimse"

    @property
    def state_path(self) -> Path:
        return self.path.with_suffix(".json")

    @property
    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0


class Outbox:
    """The outbox under ``cache_directory``."""

    def __init__(self, cache_directory) -> None:
        self.folder = Path(cache_directory).expanduser() / OUTBOX_FOLDER_NAME

    def add(self, paths: Iterable, server: Server, transport: str = "dimse") -> list:
        """Copy DICOM files (or folders of them) into the outbox for ``server``.

        ``transport`` is "dimse" (C-STORE) or "dicomweb" (STOW-RS). An object
        already queued for that server and transport (same SOP Instance UID)
        is not copied again. Returns the entries in the order of the files.
        """
        if transport not in TRANSPORTS:
            raise OutboxError(
                f"Unknown transport {transport!r}; use one of {', '.join(TRANSPORTS)}."
            )
        entries = []
        folder = self.folder / server_key(server, transport)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _check_writable(folder)
        except OSError as exc:
            raise OutboxError(
                f"The outbox folder {folder} cannot be created or written ({exc}). "
                "Choose a writable cache folder with 'media2dicom servers local "
                "--cache-directory DIR'."
            )
        for source in collect_files(paths):
            header = read_file_header(source)
            target = folder / f"{_safe_uid(header.sop_instance_uid)}.dcm"
            existing = self._read_entry(target.with_suffix(".json"))
            if existing is not None and target.exists():
                LOGGER.info(
                    "%s is already queued for %s", header.sop_instance_uid, server.name
                )
                entries.append(existing)
                continue
            _atomic_copy(source, target)
            entry = OutboxEntry(
                sop_instance_uid=header.sop_instance_uid,
                sop_class_uid=header.sop_class_uid,
                server=server,
                path=target,
                source_path=str(source),
                queued_at=_now(),
                transport=transport,
            )
            self._write_entry(entry)
            LOGGER.info(
                "Queued %s for %s in %s", entry.sop_instance_uid, server.name, target
            )
            entries.append(entry)
        return entries

    def entries(
        self, server_name: Optional[str] = None, sop_instance_uid: Optional[str] = None
    ) -> list:
        """List the queued entries, optionally of one server or one object."""
        if not self.folder.is_dir():
            return []
        found = []
        for state_path in sorted(self.folder.glob("*/*.json")):
            entry = self._read_entry(state_path)
            if entry is None:
                continue
            if server_name is not None and entry.server.name != server_name:
                continue
            if (
                sop_instance_uid is not None
                and entry.sop_instance_uid != sop_instance_uid
            ):
                continue
            found.append(entry)
        return found

    def send(
        self,
        entries: list,
        calling_aet: str = DEFAULT_CALLING_AET,
        timeouts: Optional[Timeouts] = None,
        progress: Optional[ProgressCallback] = None,
        allow_uncompressed_fallback: bool = True,
        server: Optional[Server] = None,
    ) -> list:
        """Send ``entries`` and remove those the servers stored.

        Entries are grouped by server and transport, and each group goes over
        one or more associations (or STOW-RS requests). ``server`` replaces
        the stored server details, for example after the settings changed.
        Returns one StoreResult per entry. Entries that were not stored stay
        queued with their reason.
        """
        results = []
        groups = {}
        for entry in entries:
            target = server or entry.server
            key = (entry.transport, target.name, target.host, target.port)
            groups.setdefault(key, []).append(entry)
        for group in groups.values():
            target = server or group[0].server
            for entry in group:
                entry.attempts += 1
                entry.last_attempt = _now()
                if entry.attempts > 1:
                    LOGGER.info(
                        "Retrying %s to %s (attempt %d)",
                        entry.sop_instance_uid,
                        target.describe(),
                        entry.attempts,
                    )
                self._write_entry(entry)
            by_path = {entry.path: entry for entry in group}
            paths = [entry.path for entry in group]
            if group[0].transport == "dicomweb":
                from Media2DICOMLib.dicomweb import store_instances

                sent = store_instances(target, paths, progress, timeouts)
            else:
                sent = send_files(
                    target,
                    paths,
                    calling_aet=calling_aet,
                    timeouts=timeouts,
                    progress=progress,
                    allow_uncompressed_fallback=allow_uncompressed_fallback,
                )
            for result in sent:
                entry = by_path[result.path]
                if result.stored:
                    self.remove(entry)
                else:
                    entry.last_reason = result.message
                    self._write_entry(entry)
                results.append(result)
        return results

    def send_files(
        self,
        server: Server,
        paths: Iterable,
        calling_aet: str = DEFAULT_CALLING_AET,
        timeouts: Optional[Timeouts] = None,
        progress: Optional[ProgressCallback] = None,
        allow_uncompressed_fallback: bool = True,
        transport: str = "dimse",
    ) -> list:
        """Queue ``paths`` for ``server``, then send them.

        The returned results name the original files, not the outbox copies.
        """
        entries = self.add(paths, server, transport)
        results = self.send(
            entries,
            calling_aet=calling_aet,
            timeouts=timeouts,
            progress=progress,
            allow_uncompressed_fallback=allow_uncompressed_fallback,
        )
        originals = {entry.path: Path(entry.source_path) for entry in entries}
        return [_with_original_path(result, originals) for result in results]

    def remove(self, entry: OutboxEntry) -> None:
        """Delete ``entry``'s copy and state file."""
        entry.path.unlink(missing_ok=True)
        entry.state_path.unlink(missing_ok=True)
        LOGGER.info(
            "Removed %s for %s from the outbox",
            entry.sop_instance_uid,
            entry.server.name,
        )
        try:
            entry.path.parent.rmdir()
        except OSError:
            pass  # other entries of the server remain

    def _write_entry(self, entry: OutboxEntry) -> None:
        state = asdict(entry)
        state["path"] = entry.path.name
        _atomic_write_text(entry.state_path, json.dumps(state, indent=2))

    def _read_entry(self, state_path: Path) -> Optional[OutboxEntry]:
        if not state_path.exists():
            return None
        try:
            state = json.loads(state_path.read_text(encoding="utf-8"))
            server_state = state.pop("server")
            tls = server_state.pop("tls", None)
            server = Server(**server_state, tls=TLSOptions(**tls) if tls else None)
            state["path"] = state_path.with_name(state["path"])
            return OutboxEntry(server=server, **state)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            LOGGER.error(
                "Skipped the damaged outbox state file %s: %s", state_path, exc
            )
            return None


def server_key(server: Server, transport: str = "dimse") -> str:
    """Return the folder name of ``server`` and ``transport`` in the outbox."""
    text = f"{server.name}-{server.called_aet}-{server.host}-{server.port}"
    if transport != "dimse":
        text += f"-{transport}"
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def _with_original_path(result: StoreResult, originals: dict) -> StoreResult:
    original = originals.get(result.path)
    if original is None:
        return result
    message = result.message.replace(str(result.path), str(original))
    if not result.stored:
        message += " A copy stays in the outbox; retry with 'media2dicom outbox retry'."
    return StoreResult(
        original,
        result.sop_class_uid,
        result.sop_instance_uid,
        result.transfer_syntax_used,
        result.status,
        result.category,
        message,
    )


def _safe_uid(uid: str) -> str:
    if not re.fullmatch(r"[0-9.]{1,64}", uid):
        raise NetworkError(
            f"The SOP Instance UID {uid!r} is not a valid UID, so the object is not "
            "queued. Fix the object before sending it."
        )
    return uid


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _check_writable(folder: Path) -> None:
    """Raise OSError unless a file can be created in ``folder``."""
    handle, probe = tempfile.mkstemp(prefix=".probe-", dir=folder)
    os.close(handle)
    os.unlink(probe)


def _atomic_copy(source: Path, target: Path) -> None:
    handle, temporary = tempfile.mkstemp(prefix=".copy-", dir=target.parent)
    os.close(handle)
    try:
        shutil.copyfile(source, temporary)
        with open(temporary, "rb") as stream:
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        raise OutboxError(f"Failed to copy {source} into the outbox {target}: {exc}")


def _atomic_write_text(path: Path, text: str) -> None:
    try:
        write_text_atomically(path, text)
    except OSError as exc:
        raise OutboxError(f"Failed to write the outbox state file {path}: {exc}")
