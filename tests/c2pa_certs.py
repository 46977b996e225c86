"""A C2PA signing chain made on the spot (root CA -> intermediate CA -> signing certificate), so
no key is ever committed.

The signing certificate carries what c2pa-rs's certificate profile checks ask of a C2PA claim
signer: X.509 v3, not a CA, a critical key usage with digitalSignature only, an extended key
usage of emailProtection and id-kp-documentSigning (never anyExtendedKeyUsage), subject and
authority key identifiers, and a validity that covers now. The chain handed to the signer is the
signing certificate first, then the intermediate; the root is what a reader trusts.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DOCUMENT_SIGNING = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.36")
"""id-kp-documentSigning (RFC 9336), the purpose C2PA names for claim signers."""


@dataclass(frozen=True)
class SigningChain:
    chain_pem: bytes
    """The signing certificate, then the intermediate CA (what a signer is configured with)."""
    key_pem: bytes
    """The signing certificate's private key (PKCS#8, unencrypted)."""
    root_pem: bytes
    """The root CA: a reader's trust anchor."""


def _name(common_name: str, organization: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _certificate(subject: x509.Name, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
                 issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer_key.public_key()), critical=False)
    )
    if ca:
        builder = (
            builder
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        )
    else:
        builder = (
            builder
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.EMAIL_PROTECTION, DOCUMENT_SIGNING]), critical=False)
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def make_chain(organization: str = "imagegate test", signer_name: str = "imagegate signer"
               ) -> SigningChain:
    """A fresh EC P-256 chain; `signer_name` is the signing certificate's common name."""
    root_key = ec.generate_private_key(ec.SECP256R1())
    root_name = _name(f"{organization} root CA", organization)
    root = _certificate(root_name, root_key, root_name, root_key, ca=True)

    intermediate_key = ec.generate_private_key(ec.SECP256R1())
    intermediate_name = _name(f"{organization} intermediate CA", organization)
    intermediate = _certificate(intermediate_name, intermediate_key, root_name, root_key, ca=True)

    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = _certificate(_name(signer_name, organization), leaf_key, intermediate_name,
                        intermediate_key, ca=False)

    key_pem = leaf_key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
    return SigningChain(chain_pem=_pem(leaf) + _pem(intermediate), key_pem=key_pem,
                        root_pem=_pem(root))
