"""
A throw-away certificate authority for TLS tests.

L{makeCA} writes, with the C{cryptography} package, a self-signed CA and a
server certificate it signed for C{127.0.0.1} (IP SAN) and C{localhost}
(DNS SAN) into a directory, as PEM files.

Making a real client trust the CA without touching the system store:

  - git (libcurl): C{GIT_SSL_CAINFO=<ca.pem>} (or C{http.sslCAInfo}).
  - git-annex's HTTP client (http-client-tls; its trust anchors come from
    crypton-x509-system's C{getSystemCertificateStore}, 1.6.8 in the PyPI
    wheel): the first of C{SSL_CERT_FILE} (a PEM file), C{SSL_CERT_DIR} (a
    directory of PEM files), C{SYSTEM_CERTIFICATE_PATH} (a file or a
    directory) that is set replaces the system store (C{/etc/ssl/certs/} ...).  git-annex itself has no CA
    setting.  Beware: a C{SSL_CERT_FILE} or C{SSL_CERT_DIR} inherited from
    the environment (some CI images set them to the system bundle) hides
    C{SYSTEM_CERTIFICATE_PATH}.

L{TestCA.clientEnv} sets C{GIT_SSL_CAINFO}, C{SSL_CERT_FILE} and
C{SYSTEM_CERTIFICATE_PATH}.
"""

import datetime
import ipaddress
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class TestCA:
    """
    The files L{makeCA} wrote.

    @ivar directory: where they are.
    @ivar caCert: the CA certificate (PEM).
    @ivar cadir: a directory holding only C{caCert} (for
        C{SYSTEM_CERTIFICATE_PATH} or C{SSL_CERT_DIR}).
    @ivar serverCert: the server certificate (PEM), for 127.0.0.1 and
        localhost.
    @ivar serverKey: its private key (PEM, PKCS#8, unencrypted).
    @ivar chain: the intermediate CA certificate that signed C{serverCert}
        (PEM; for Twisted's C{extraCertChain}), or L{None} when the CA
        signed it directly.
    """

    __test__ = False

    directory: str
    caCert: str
    cadir: str
    serverCert: str
    serverKey: str
    chain: "str | None" = None

    def clientEnv(self):
        """
        Environment variables that make git and git-annex trust this CA (and
        nothing else).
        """
        return {"GIT_SSL_CAINFO": self.caCert,
                "SSL_CERT_FILE": self.caCert,
                "SYSTEM_CERTIFICATE_PATH": self.cadir}


def _name(common):
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "annexd tests"),
        x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _writePEM(path, data, mode=0o644):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _caCertificate(name, key, issuerName, issuerKey, notBefore, notAfter,
                   pathLength):
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuerName)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(notBefore)
        .not_valid_after(notAfter)
        .add_extension(x509.BasicConstraints(ca=True, path_length=pathLength),
                       critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(
            key.public_key()), critical=False)
        .sign(issuerKey, hashes.SHA256()))


def makeCA(directory, hosts=("127.0.0.1", "localhost"), days=2,
           intermediate=False):
    """
    Write a new CA and a server certificate signed by it into
    C{directory} (created if needed): C{ca.pem}, C{cadir/ca.pem},
    C{server.pem} and C{server.key} (and C{chain.pem}).

    @param hosts: the server certificate's subject alternative names: IP
        addresses become IP SANs, anything else DNS SANs.  The first is
        also its common name.
    @param days: validity (from an hour ago).
    @param intermediate: when true, the CA signs an intermediate CA
        (C{chain.pem}) that signs the server certificate.
    @rtype: L{TestCA}
    """
    os.makedirs(directory, exist_ok=True)
    cadir = os.path.join(directory, "cadir")
    os.makedirs(cadir, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    notBefore = now - datetime.timedelta(hours=1)
    notAfter = now + datetime.timedelta(days=days)

    caKey = ec.generate_private_key(ec.SECP256R1())
    caName = _name("annexd test CA")
    caCert = _caCertificate(caName, caKey, caName, caKey, notBefore,
                            notAfter, None)
    issuerName, issuerKey, chainCert = caName, caKey, None
    if intermediate:
        issuerKey = ec.generate_private_key(ec.SECP256R1())
        issuerName = _name("annexd test intermediate CA")
        chainCert = _caCertificate(issuerName, issuerKey, caName, caKey,
                                   notBefore, notAfter, 0)

    serverKey = ec.generate_private_key(ec.SECP256R1())
    names = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    serverCert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(issuerName)
        .public_key(serverKey.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(notBefore)
        .not_valid_after(notAfter)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                       critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(
            serverKey.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuerKey.public_key()), critical=False)
        .sign(issuerKey, hashes.SHA256()))

    caPem = caCert.public_bytes(serialization.Encoding.PEM)
    paths = TestCA(
        directory=os.path.abspath(directory),
        caCert=os.path.abspath(os.path.join(directory, "ca.pem")),
        cadir=os.path.abspath(cadir),
        serverCert=os.path.abspath(os.path.join(directory, "server.pem")),
        serverKey=os.path.abspath(os.path.join(directory, "server.key")),
        chain=(None if chainCert is None else
               os.path.abspath(os.path.join(directory, "chain.pem"))))
    _writePEM(paths.caCert, caPem)
    _writePEM(os.path.join(cadir, "ca.pem"), caPem)
    _writePEM(paths.serverCert,
              serverCert.public_bytes(serialization.Encoding.PEM))
    _writePEM(paths.serverKey, serverKey.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()), mode=0o600)
    if chainCert is not None:
        _writePEM(paths.chain,
                  chainCert.public_bytes(serialization.Encoding.PEM))
    return paths
