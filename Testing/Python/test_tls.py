"""DICOM TLS against Orthanc started with certificates made by the test."""

from __future__ import annotations

import logging
import shutil
import ssl
import subprocess

import pydicom
import pytest

import peers
from fault_scp import MockStow, stow_reply
from Media2DICOMLib.network import Server, TLSOptions, echo, send_files
from Media2DICOMLib.query import find, retrieve_source_series
from Media2DICOMLib.source_study import read_source_series

OPENSSL = shutil.which("openssl")


def openssl(*arguments, cwd) -> None:
    subprocess.run(
        [OPENSSL, *arguments], cwd=cwd, check=True, capture_output=True, timeout=60
    )


class Authority:
    """A test certificate authority, made with the openssl command line tool."""

    def __init__(self, folder, name: str) -> None:
        self.folder = folder
        self.name = name
        self.path = folder / f"{name}.pem"
        self.key_path = folder / f"{name}.key"
        openssl(
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            self.key_path,
            "-out",
            self.path,
            "-days",
            "1",
            "-subj",
            f"/CN={name}",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            cwd=folder,
        )

    def issue(self, name: str, hosts=()):
        """Return (certificate path, key path) of a new leaf certificate."""
        key_path = self.folder / f"{name}.key"
        request_path = self.folder / f"{name}.csr"
        certificate_path = self.folder / f"{name}.pem"
        extensions = self.folder / f"{name}.ext"
        lines = ["basicConstraints=CA:FALSE"]
        if hosts:
            names = [f"IP:{h}" if h[0].isdigit() else f"DNS:{h}" for h in hosts]
            lines.append("subjectAltName=" + ",".join(names))
        extensions.write_text("\n".join(lines) + "\n")
        openssl(
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            key_path,
            "-out",
            request_path,
            "-subj",
            f"/CN={name}",
            cwd=self.folder,
        )
        openssl(
            "x509",
            "-req",
            "-in",
            request_path,
            "-CA",
            self.path,
            "-CAkey",
            self.key_path,
            "-CAcreateserial",
            "-out",
            certificate_path,
            "-days",
            "1",
            "-extfile",
            extensions,
            cwd=self.folder,
        )
        return certificate_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    if OPENSSL is None:
        pytest.skip("openssl is not installed (Debian package openssl)")
    folder = tmp_path_factory.mktemp("pki")
    authority = Authority(folder, "test-ca")
    server_cert, server_key = authority.issue("orthanc", ("127.0.0.1", "localhost"))
    client_cert, client_key = authority.issue("media2dicom")
    other = Authority(folder, "other-ca")
    return {
        "ca": authority.path,
        "other_ca": other.path,
        "server": (server_cert, server_key),
        "client": (client_cert, client_key),
    }


def start_tls_orthanc(folder, pki, client_certificate_required: bool):
    if not peers.orthanc_available():
        pytest.skip("Orthanc is not installed (Debian package orthanc)")
    certificate, key = pki["server"]
    return peers.start_orthanc(
        folder,
        extra_config={
            "DicomTlsEnabled": True,
            "DicomTlsCertificate": str(certificate),
            "DicomTlsPrivateKey": str(key),
            "DicomTlsTrustedCertificates": str(pki["ca"]),
            "DicomTlsRemoteCertificateRequired": client_certificate_required,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowGet": True,
        },
    )


@pytest.fixture
def tls_orthanc(tmp_path_factory, pki):
    """Orthanc with DICOM TLS that does not ask for a client certificate."""
    server = start_tls_orthanc(tmp_path_factory.mktemp("orthanc"), pki, False)
    yield server
    server.stop()


@pytest.fixture
def mutual_tls_orthanc(tmp_path_factory, pki):
    """Orthanc with DICOM TLS that requires a client certificate from the CA."""
    server = start_tls_orthanc(tmp_path_factory.mktemp("orthanc"), pki, True)
    yield server
    server.stop()


def tls_server(orthanc, **tls) -> Server:
    return Server(
        name="tls",
        host="127.0.0.1",
        port=orthanc.dicom_port,
        called_aet=orthanc.aet,
        tls=TLSOptions(**tls),
    )


def test_echo_verified_server(tls_orthanc, pki):
    """C-ECHO over TLS succeeds when the server certificate chains to the CA."""
    result = echo(tls_server(tls_orthanc, ca_file=str(pki["ca"])))
    assert result.ok, result.reason
    assert result.status == 0


def test_echo_untrusted_certificate_fails(tls_orthanc, pki):
    """A server certificate from another CA is rejected with the reason."""
    result = echo(tls_server(tls_orthanc, ca_file=str(pki["other_ca"])))
    assert not result.ok
    assert "not trusted" in result.reason
    assert "certificate verify failed" in result.reason
    assert f"ORTHANC at 127.0.0.1:{tls_orthanc.dicom_port} (TLS)" in result.reason


def test_echo_wrong_hostname_fails(tls_orthanc, pki):
    """A certificate that does not name the host is rejected."""
    server = tls_server(
        tls_orthanc, ca_file=str(pki["ca"]), server_hostname="pacs.invalid"
    )
    result = echo(server)
    assert not result.ok
    assert "not trusted" in result.reason


def test_echo_without_verification(tls_orthanc, pki, caplog):
    """Turning verification off connects to any certificate, with a warning."""
    with caplog.at_level(logging.WARNING):
        result = echo(tls_server(tls_orthanc, verify=False))
    assert result.ok, result.reason
    assert "verification is off" in caplog.text


def test_plain_client_to_tls_fails(tls_orthanc):
    """A client without TLS gets a failure, not a hang."""
    plain = Server("plain", "127.0.0.1", tls_orthanc.dicom_port, tls_orthanc.aet)
    result = echo(plain)
    assert not result.ok
    assert f"ORTHANC at 127.0.0.1:{tls_orthanc.dicom_port}" in result.reason


def test_client_certificate_required(mutual_tls_orthanc, pki):
    """A server that requires a client certificate accepts ours and rejects none."""
    certificate, key = pki["client"]
    without = echo(tls_server(mutual_tls_orthanc, ca_file=str(pki["ca"])))
    assert not without.ok
    with_certificate = echo(
        tls_server(
            mutual_tls_orthanc,
            ca_file=str(pki["ca"]),
            cert_file=str(certificate),
            key_file=str(key),
        )
    )
    assert with_certificate.ok, with_certificate.reason


def test_send_and_query_over_tls(mutual_tls_orthanc, pki, shared_data):
    """C-STORE, C-FIND and C-GET work over mutual TLS."""
    certificate, key = pki["client"]
    server = tls_server(
        mutual_tls_orthanc,
        ca_file=str(pki["ca"]),
        cert_file=str(certificate),
        key_file=str(key),
    )
    files = sorted((shared_data / "ct-3slice").glob("*.dcm"))
    results = send_files(server, files)
    assert [r.category for r in results] == ["success"] * 3
    for result in results:
        assert mutual_tls_orthanc.find_instances(result.sop_instance_uid)

    local = read_source_series(files)
    rows = find(server, "STUDY", patient_id="99000")
    assert [row.value("StudyInstanceUID") for row in rows] == [local.study_instance_uid]
    retrieved = retrieve_source_series(
        server, local.study_instance_uid, local.series_instance_uid, method="get"
    )
    assert retrieved.header.SOPInstanceUID == local.instances[0].sop_instance_uid
    assert retrieved.frame_of_reference_uid == local.frame_of_reference_uid


def test_missing_ca_file_reported(tls_orthanc, tmp_path):
    """An unreadable CA file is reported with the server and what to check."""
    result = echo(tls_server(tls_orthanc, ca_file=str(tmp_path / "absent.pem")))
    assert not result.ok
    assert "Failed to load the TLS certificates" in result.reason
    assert "ca_file" in result.reason


def test_stow_https_verifies_certificate(pki, shared_data, tmp_path):
    """STOW-RS over HTTPS checks the server certificate against the CA file."""
    pytest.importorskip("dicomweb_client")
    from Media2DICOMLib.dicomweb import store_instances

    certificate, key = pki["server"]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate, key)
    mock = MockStow("", ssl_context=context)
    try:
        path = shared_data / "ct-3slice" / "01.dcm"
        header = pydicom.dcmread(path, stop_before_pixels=True)
        mock.reply = stow_reply(str(header.SOPClassUID), str(header.SOPInstanceUID))

        trusted = Server(
            name="https",
            host="127.0.0.1",
            port=104,
            called_aet="HTTPS",
            dicomweb_url=mock.url,
            tls=TLSOptions(ca_file=str(pki["ca"])),
        )
        assert mock.url.startswith("https://")
        assert store_instances(trusted, [path])[0].category == "success"

        untrusted = Server(
            **{**vars(trusted), "tls": TLSOptions(ca_file=str(pki["other_ca"]))}
        )
        result = store_instances(untrusted, [path])[0]
        assert result.category == "not sent"
        assert "CERTIFICATE_VERIFY_FAILED" in result.message
        assert len(mock.authorizations) == 1
    finally:
        mock.stop()
