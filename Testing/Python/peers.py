"""Real DICOM peers started by the tests on 127.0.0.1.

Orthanc (Debian package ``orthanc``) and DCMTK's ``storescp`` run as child
processes on free loopback ports and are stopped when the test ends. Nothing
here talks to any other host.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

ORTHANC_BINARY = "/usr/sbin/Orthanc"
ORTHANC_PLUGIN_DIR = Path("/usr/share/orthanc/plugins")
# The DCMTK storescp; a PATH lookup may find a Python shim of the same name.
DCMTK_STORESCP = "/usr/bin/storescp"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"Nothing listens on 127.0.0.1:{port} after {timeout} s")


@dataclass
class Orthanc:
    """A running Orthanc with its ports and a small REST client."""

    process: subprocess.Popen
    folder: Path
    dicom_port: int
    http_port: int
    aet: str = "ORTHANC"
    log_path: Optional[Path] = None
    extra: dict = field(default_factory=dict)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def get_json(self, path: str):
        with urllib.request.urlopen(self.http_url + path, timeout=30) as response:
            return json.loads(response.read())

    def get_bytes(self, path: str) -> bytes:
        with urllib.request.urlopen(self.http_url + path, timeout=30) as response:
            return response.read()

    def post_json(self, path: str, body) -> object:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(self.http_url + path, data=data, method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read() or b"null")

    def upload(self, path: Path) -> dict:
        """Store a DICOM file through the REST API."""
        return self.post_json("/instances", Path(path).read_bytes())

    def find_instances(self, sop_instance_uid: str) -> list:
        return self.post_json(
            "/tools/lookup", sop_instance_uid.encode()
        )

    def stop(self) -> None:
        # A clean shutdown takes Orthanc about 3 s, and its storage is thrown
        # away with the test's folder, so it is killed outright.
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def orthanc_available() -> bool:
    return os.access(ORTHANC_BINARY, os.X_OK)


def start_orthanc(
    folder: Path,
    aet: str = "ORTHANC",
    modalities: Optional[dict] = None,
    dicomweb: bool = False,
    extra_config: Optional[dict] = None,
) -> Orthanc:
    """Start Orthanc on free loopback ports with its storage under ``folder``.

    ``modalities`` fills ``DicomModalities`` (name to ``[AET, host, port]``), the
    C-MOVE destinations. ``dicomweb`` loads the DICOMweb plugin when installed.
    ``extra_config`` entries override the generated configuration.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dicom_port = free_port()
    http_port = free_port()
    config = {
        "Name": "Media2DICOM test PACS",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "UnknownSopClassAccepted": False,
        "DicomModalities": modalities or {},
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True,
        "DicomScpTimeout": 30,
        "StableAge": 1,
        "OrthancExplorerEnabled": False,
        "WebDavEnabled": False,
        "ConcurrentJobs": 2,
        "Plugins": [],
    }
    if dicomweb:
        plugin = ORTHANC_PLUGIN_DIR / "libOrthancDicomWeb.so"
        config["Plugins"] = [str(plugin)]
        config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
    if extra_config:
        config.update(extra_config)
    config_path = folder / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log_path = folder / "orthanc.log"
    log_file = open(log_path, "wb")
    process = subprocess.Popen(
        [ORTHANC_BINARY, "--logdir=" + str(folder), str(config_path)],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        cwd=folder,
    )
    log_file.close()
    server = Orthanc(process, folder, dicom_port, http_port, aet, log_path)
    try:
        _wait_for_http(server)
        wait_for_port(dicom_port)
    except Exception:
        server.stop()
        raise RuntimeError(
            "Orthanc did not start. The end of its log:\n" + _tail(log_path)
        )
    return server


def _wait_for_http(server: Orthanc, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError("Orthanc exited")
        try:
            server.get_json("/system")
            return
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.2)
    raise TimeoutError(f"Orthanc's HTTP API did not respond within {timeout} s")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class StoreSCP:
    """A running DCMTK storescp that writes what it receives to ``folder``."""

    process: subprocess.Popen
    folder: Path
    port: int
    aet: str

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def storescp_available() -> bool:
    return os.access(DCMTK_STORESCP, os.X_OK)


def start_storescp(folder: Path, aet: str = "STORESCP") -> StoreSCP:
    """Start DCMTK storescp on a free loopback port, accepting every SOP class."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = subprocess.Popen(
        [
            DCMTK_STORESCP,
            "--aetitle", aet,
            "--output-directory", str(folder),
            "--promiscuous",
            "--accept-all",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port)
    return StoreSCP(process, folder, port, aet)


def dciodvfy_available() -> bool:
    return shutil.which("dciodvfy") is not None
