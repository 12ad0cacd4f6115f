"""Outputs the providers would return, computed for real from a resource's inputs.

The mock run of the Pulumi program (stack_runner.py) answers every resource with these, so the
recorded graph holds usable values: a generated password is a random string of the asked length and
alphabet, a TLS key is a key, a self-signed certificate is a certificate with the asked names,
validity and usages. tests/docker creates the recorded containers on a real Docker engine from
this graph, where a stand-in string would not start nginx.
"""
from __future__ import annotations

import datetime
import hashlib
import ipaddress
import secrets
import string

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# terraform-provider-random's default special characters.
RANDOM_SPECIAL = "!@#$%&*()-_=+[]{}<>:?"
_CURVES = {"P224": ec.SECP224R1, "P256": ec.SECP256R1, "P384": ec.SECP384R1, "P521": ec.SECP521R1}
# allowed_uses name -> cryptography's KeyUsage argument
_KEY_USAGES = {"digital_signature": "digital_signature", "content_commitment": "content_commitment",
               "key_encipherment": "key_encipherment", "data_encipherment": "data_encipherment",
               "key_agreement": "key_agreement", "cert_signing": "key_cert_sign", "crl_signing": "crl_sign",
               "encipher_only": "encipher_only", "decipher_only": "decipher_only"}
_EXT_USAGES = {"server_auth": ExtendedKeyUsageOID.SERVER_AUTH, "client_auth": ExtendedKeyUsageOID.CLIENT_AUTH,
               "code_signing": ExtendedKeyUsageOID.CODE_SIGNING,
               "email_protection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
               "timestamping": ExtendedKeyUsageOID.TIME_STAMPING, "ocsp_signing": ExtendedKeyUsageOID.OCSP_SIGNING}
_SUBJECT = {"commonName": NameOID.COMMON_NAME, "organization": NameOID.ORGANIZATION_NAME,
            "organizationalUnit": NameOID.ORGANIZATIONAL_UNIT_NAME, "country": NameOID.COUNTRY_NAME,
            "province": NameOID.STATE_OR_PROVINCE_NAME, "locality": NameOID.LOCALITY_NAME}


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def random_password(inputs: dict) -> dict:
    """random.RandomPassword: ``result`` of ``length`` characters from the enabled classes."""
    classes = [(inputs.get("lower", True), string.ascii_lowercase),
               (inputs.get("upper", True), string.ascii_uppercase),
               (inputs.get("numeric", True), string.digits),
               (inputs.get("special", True), inputs.get("overrideSpecial") or RANDOM_SPECIAL)]
    alphabet = "".join(chars for enabled, chars in classes if enabled)
    return {"result": "".join(secrets.choice(alphabet) for _ in range(int(inputs["length"])))}


def private_key(inputs: dict) -> dict:
    """tls.PrivateKey: PEM outputs in the formats the tls provider documents."""
    algorithm = inputs.get("algorithm", "RSA")
    if algorithm == "ECDSA":
        key = ec.generate_private_key(_CURVES[inputs.get("ecdsaCurve", "P224")]())
        legacy = serialization.PrivateFormat.TraditionalOpenSSL
    elif algorithm == "RSA":
        key = rsa.generate_private_key(public_exponent=65537, key_size=int(inputs.get("rsaBits", 2048)))
        legacy = serialization.PrivateFormat.TraditionalOpenSSL
    elif algorithm == "ED25519":
        key = ed25519.Ed25519PrivateKey.generate()
        legacy = serialization.PrivateFormat.PKCS8
    else:
        raise ValueError(f"tls.PrivateKey algorithm {algorithm!r} is not emulated")

    def pem(fmt):
        return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()).decode()

    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return {"privateKeyPem": pem(legacy), "privateKeyPemPkcs8": pem(serialization.PrivateFormat.PKCS8),
            "publicKeyPem": public}


def self_signed_cert(inputs: dict) -> dict:
    """tls.SelfSignedCert: a certificate signed by ``privateKeyPem`` with the given subject,
    names, validity and usages."""
    key = serialization.load_pem_private_key(inputs["privateKeyPem"].encode(), password=None)
    subject_in = inputs.get("subject") or {}
    if isinstance(subject_in, list):
        subject_in = subject_in[0] if subject_in else {}
    name = x509.Name([x509.NameAttribute(oid, str(subject_in[k])) for k, oid in _SUBJECT.items() if subject_in.get(k)])
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    end = now + datetime.timedelta(hours=int(inputs["validityPeriodHours"]))
    usages = set(inputs.get("allowedUses") or [])
    unknown = usages - set(_KEY_USAGES) - set(_EXT_USAGES)
    if unknown:
        raise ValueError(f"tls.SelfSignedCert allowedUses {sorted(unknown)} are not emulated")
    is_ca = bool(inputs.get("isCaCertificate", False))
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True))
    sans = [x509.DNSName(n) for n in inputs.get("dnsNames") or []]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in inputs.get("ipAddresses") or []]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    key_usage = {arg: use in usages for use, arg in _KEY_USAGES.items()}
    if any(key_usage.values()):
        builder = builder.add_extension(x509.KeyUsage(**key_usage), critical=True)
    ext = [_EXT_USAGES[u] for u in sorted(usages) if u in _EXT_USAGES]
    if ext:
        builder = builder.add_extension(x509.ExtendedKeyUsage(ext), critical=False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    cert = builder.sign(key, algorithm)
    return {"certPem": cert.public_bytes(serialization.Encoding.PEM).decode(),
            "validityStartTime": now.isoformat().replace("+00:00", "Z"),
            "validityEndTime": end.isoformat().replace("+00:00", "Z")}


def outputs_for(typ: str, name: str, inputs: dict) -> dict:
    """The provider's extra outputs for one resource (docker image ids are stand-ins: the engine
    harness maps them back to the images it builds)."""
    if typ == "docker:index/remoteImage:RemoteImage":
        return {"imageId": f"sha256:{digest(inputs['name'])}",
                "repoDigest": f"{inputs['name']}@sha256:{digest(inputs['name'])}"}
    if typ == "docker:index/image:Image":
        return {"repoDigest": f"{inputs['imageName']}@sha256:{digest(name)}"}
    if typ == "random:index/randomPassword:RandomPassword":
        return random_password(inputs)
    if typ == "tls:index/privateKey:PrivateKey":
        return private_key(inputs)
    if typ == "tls:index/selfSignedCert:SelfSignedCert":
        return self_signed_cert(inputs)
    return {}
