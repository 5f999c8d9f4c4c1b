"""A throw-away certificate authority for TLS tests (TLS-3 ``verify``), made with ``cryptography``.

    ca = TestCA(tmp_path)   # ca.ca_file: the CA certificate (PEM), for tls_ca_file
    context = ca.server_context("mx1.dest.test")   # an ssl server context with a leaf for that name
    sink = Sink(..., starttls=True); sink.tls_context = context   # before the first connection
    # also the leaf's DER and SPKI (DANE, TLS-7):
    context, der, spki = ca.server_leaf("mx1.dest.test")
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


class TestCA:
    """A CA whose certificate is written to ``directory/ca.pem``; leaves are signed on demand."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path, name: str = "mxroute test CA") -> None:
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()),
                           critical=False)
            .sign(self.key, hashes.SHA256())
        )
        directory.mkdir(parents=True, exist_ok=True)
        self.ca_file = directory / "ca.pem"
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def leaf_files(self, *names: str) -> tuple[Path, Path]:
        """A certificate for ``names`` (DNS SANs; an IP address is an IP SAN) signed by this CA;
        (cert.pem, key.pem)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([_san(n) for n in names]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                           critical=False)
            .sign(self.key, hashes.SHA256())
        )
        stem = names[0].replace("*", "_").replace(":", "_")
        cert_path, key_path = self.directory / f"{stem}.crt", self.directory / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return cert_path, key_path

    def server_context(self, *names: str) -> ssl.SSLContext:
        """A TLS server context presenting a leaf for ``names``."""
        return self.server_leaf(*names)[0]

    def server_leaf(self, *names: str) -> tuple[ssl.SSLContext, bytes, bytes]:
        """A TLS server context with a leaf for ``names``, and that leaf's DER certificate and DER
        SPKI."""
        cert_path, key_path = self.leaf_files(*names)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_path, key_path)
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
        return context, cert.public_bytes(serialization.Encoding.DER), spki

    @property
    def der(self) -> bytes:
        """The CA certificate, DER (a DANE-TA ``2 0 0`` record's data)."""
        return self.cert.public_bytes(serialization.Encoding.DER)


def _san(name: str) -> x509.GeneralName:
    """An IP SAN for an IP address (RFC 5280 iPAddress), else a DNS SAN."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)
