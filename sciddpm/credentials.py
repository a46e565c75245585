"""C2PA content credentials on generated PNG files: a signed statement that a model made them.

The text chunks :mod:`sciddpm.provenance` writes say a file is synthetic, but anyone can edit or
strip them unnoticed. A C2PA manifest (Coalition for Content Provenance and Authenticity,
specification 2.x, https://c2pa.org/specifications/) binds the same statement to the file's
bytes with a signature: a ``c2pa.created`` action whose ``digitalSourceType`` is IPTC's
``trainedAlgorithmicMedia``, and the sciddpm record (model, weights hash, sampler, steps,
guidance, seed) as an ``org.sciddpm.provenance`` assertion. Any C2PA reader (Adobe's Content
Credentials site, ``c2patool``) shows it, and an edit of the pixels breaks the signature's hash.

Signing and reading go through ``c2pa-python`` (the Content Authenticity Initiative's bindings of
c2pa-rs; the optional extra ``sciddpm[provenance]``). The signer is the user's: a private key and
its certificate chain in PEM files. sciddpm signs PNG only: c2pa-rs 0.91 adds a one-tag image file
directory to a multi-page TIFF, which tifffile reports as a broken page, so OME-TIFF and OME-Zarr
output keeps its record in the OME metadata instead.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sciddpm.provenance import DIGITAL_SOURCE_TYPE

__all__ = ["ALGORITHMS", "ASSERTION", "C2paSigner", "read_credentials", "sign_png", "throwaway_signer"]

#: The assertion label that holds sciddpm's provenance record.
ASSERTION = "org.sciddpm.provenance"
#: Signature algorithms C2PA allows (COSE names), by the name a user gives.
ALGORITHMS = ("es256", "es384", "es512", "ps256", "ps384", "ps512", "ed25519")
_INSTALL = "C2PA signing needs c2pa-python: pip install 'sciddpm[provenance]'"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _c2pa() -> Any:
    try:
        import c2pa
    except ImportError as err:
        raise ImportError(_INSTALL) from err
    return c2pa


@dataclass(frozen=True)
class C2paSigner:
    """Who signs: a PEM private ``key``, its PEM ``certificate`` chain (signer first) and ``algorithm``.

    ``algorithm`` is one of :data:`ALGORITHMS` and must fit the key (``es256``: a P-256 EC key).
    ``timestamp_url``: an RFC 3161 time-stamp authority, so the signature outlives the
    certificate (None: none; the machine has to reach it). The certificate must be an end-entity
    certificate (not a CA) with the digital-signature key usage, issued by a CA in the chain (C2PA
    refuses a self-signed signer); readers report a chain outside their trust list as
    ``signingCredential.untrusted`` while still checking the signature. Raises FileNotFoundError
    naming a missing file and ValueError for an unknown algorithm.
    """

    key: Path
    certificate: Path
    algorithm: str = "es256"
    timestamp_url: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", Path(self.key))
        object.__setattr__(self, "certificate", Path(self.certificate))
        for role, path in (("private key", self.key), ("certificate chain", self.certificate)):
            if not path.is_file():
                raise FileNotFoundError(f"the C2PA {role} {str(path)!r} does not exist (a PEM file)")
        if self.algorithm.lower() not in ALGORITHMS:
            raise ValueError(f"unknown C2PA signing algorithm {self.algorithm!r}; use one of {ALGORITHMS}")

    def check(self) -> None:
        """Sign a 1 x 1 PNG in a temporary folder, so a bad key or certificate fails before any sampling.

        Raises ImportError without c2pa-python and RuntimeError as :func:`sign_png`.
        """
        import zlib

        def chunk(kind: bytes, data: bytes) -> bytes:
            body = kind + data
            return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

        png = _PNG_SIGNATURE + chunk(b"IHDR", bytes([0, 0, 0, 1, 0, 0, 0, 1, 8, 0, 0, 0, 0]))
        png += chunk(b"IDAT", zlib.compress(b"\x00\x00")) + chunk(b"IEND", b"")
        with tempfile.TemporaryDirectory() as folder:
            probe = Path(folder) / "probe.png"
            probe.write_bytes(png)
            sign_png(probe, {"generator": "sciddpm check"}, self)

    def _native(self, c2pa: Any) -> Any:
        info = c2pa.C2paSignerInfo(
            getattr(c2pa.C2paSigningAlg, self.algorithm.upper()),
            self.certificate.read_bytes(),
            self.key.read_bytes(),
            self.timestamp_url.encode() if self.timestamp_url else None,
        )
        return c2pa.Signer.from_info(info)


def _manifest(provenance: Mapping[str, Any], title: str) -> dict[str, Any]:
    """The C2PA manifest definition: the created action with IPTC's source type, and the record."""
    record = json.loads(json.dumps(dict(provenance), default=str))  # JSON values only
    generator = str(record.get("generator", "sciddpm"))
    name, _, version = generator.partition(" ")
    parameters = {
        k: record[k] for k in ("model", "weights_sha256", "sampler", "steps", "seed") if k in record
    }
    return {
        "claim_generator_info": [{"name": name, "version": version or "unknown"}],
        "title": title,
        "assertions": [
            {
                "label": "c2pa.actions",
                "data": {
                    "actions": [
                        {
                            "action": "c2pa.created",
                            "digitalSourceType": DIGITAL_SOURCE_TYPE,
                            "softwareAgent": {"name": generator},
                            "parameters": parameters,
                        }
                    ]
                },
            },
            {"label": ASSERTION, "data": record},
        ],
    }


def sign_png(path: str | Path, provenance: Mapping[str, Any], signer: C2paSigner) -> Path:
    """Embed a signed C2PA manifest of ``provenance`` (a :func:`sciddpm.provenance.record`) in a PNG.

    ``path`` is a PNG file (told by its content, so a temporary name works too). It is signed into
    a temporary file beside it, which takes the original's permissions and replaces it only when
    signing succeeded: a failure leaves the PNG as it was, and no temporary file. Its text chunks
    are kept. Returns the path. Raises FileNotFoundError for a missing file, ValueError for one
    that is not a PNG, ImportError without c2pa-python, and RuntimeError naming the key and
    certificate when c2pa refuses them (wrong algorithm for the key, a self-signed or CA
    certificate, a key that does not match the certificate) or the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: write the PNG before signing it")
    with open(path, "rb") as fh:
        if fh.read(8) != _PNG_SIGNATURE:
            raise ValueError(f"{path} is not a PNG: sciddpm signs C2PA manifests into PNG files only")
    c2pa = _c2pa()
    fd, tmp = tempfile.mkstemp(suffix=".png", prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        try:
            native = signer._native(c2pa)
        except c2pa.C2paError as err:
            raise RuntimeError(
                f"c2pa refused the key {str(signer.key)!r} or certificate {str(signer.certificate)!r} "
                f"({signer.algorithm}): {err}"
            ) from err
        try:
            builder = c2pa.Builder.from_json(json.dumps(_manifest(provenance, path.name)))
            with open(path, "rb") as source, open(tmp, "w+b") as dest:
                builder.sign(native, "image/png", source, dest)
        except c2pa.C2paError as err:
            raise RuntimeError(
                f"C2PA signing of {path} with key {str(signer.key)!r} and certificate "
                f"{str(signer.certificate)!r} ({signer.algorithm}) failed: {err}"
            ) from err
        shutil.copymode(path, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_credentials(path: str | Path) -> dict[str, Any]:
    """The active C2PA manifest of ``path``: what made it, the sciddpm record and the checks.

    Returns ``{"digital_source_type", "record", "signer", "issuer", "validation"}``: the created
    action's source type, the ``org.sciddpm.provenance`` assertion (None when another tool made the
    manifest), the certificate's common name and organisation, and the reader's validation codes
    that are not successes (``signingCredential.untrusted`` for a chain outside the trust list;
    ``assertion.dataHash.mismatch`` when the pixels were edited after signing). Raises
    FileNotFoundError for a missing file, ValueError for a file without a readable manifest,
    ImportError without c2pa-python.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    c2pa = _c2pa()
    try:
        store = json.loads(c2pa.Reader(path).json())
    except c2pa.C2paError as err:
        raise ValueError(f"{path}: no C2PA manifest could be read ({err})") from err
    active = store.get("active_manifest")
    if active not in store.get("manifests", {}):
        raise ValueError(f"{path}: its C2PA store names no active manifest")
    manifest = store["manifests"][active]
    source, record = None, None
    for assertion in manifest.get("assertions", []):
        if assertion["label"].startswith("c2pa.actions"):
            for action in assertion["data"].get("actions", []):
                if action.get("action") == "c2pa.created":
                    source = action.get("digitalSourceType")
        elif assertion["label"] == ASSERTION:
            record = assertion["data"]
    info = manifest.get("signature_info", {})
    return {
        "digital_source_type": source,
        "record": record,
        "signer": info.get("common_name"),
        "issuer": info.get("issuer"),
        "validation": [status["code"] for status in store.get("validation_status", [])],
    }


def throwaway_signer(folder: str | Path, days: int = 30) -> C2paSigner:
    """A throwaway signer for trying C2PA out: a new CA and an ``es256`` signer certificate it issued.

    Writes ``signer.key`` and ``chain.pem`` (signer, then CA) into ``folder`` and returns their
    :class:`C2paSigner`. Nothing trusts this CA, so readers report ``signingCredential.untrusted``;
    sign real output with a certificate from your institution. Needs ``cryptography`` (installed
    with c2pa-python).
    """
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(common: str) -> x509.Name:
        return x509.Name([
            x509.NameAttribute(NameOID.COMMON_NAME, common),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sciddpm throwaway test"),
        ])  # fmt: skip

    def usage(sign_certificates: bool) -> x509.KeyUsage:
        flags = dict.fromkeys(
            ("content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
             "encipher_only", "decipher_only"), False,
        )  # fmt: skip
        return x509.KeyUsage(
            digital_signature=True, key_cert_sign=sign_certificates, crl_sign=sign_certificates, **flags
        )

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def certificate(subject: str, public: Any, is_ca: bool) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name("sciddpm test CA"))
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
            .add_extension(usage(is_ca), critical=True)
        )

    ca = certificate("sciddpm test CA", ca_key.public_key(), True).sign(ca_key, hashes.SHA256())
    leaf = (
        certificate("sciddpm test signer", key.public_key(), False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    (folder / "chain.pem").write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    (folder / "signer.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return C2paSigner(folder / "signer.key", folder / "chain.pem")
