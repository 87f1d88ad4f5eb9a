"""Device-side Ed25519 keys (PyNaCl): the same key ids and verdicts as securesystemslib, tampered input refused."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner, SSlibKey

from edgeops.trust import errors
from edgeops.trust.keys import generate_key, load_public_key
from edgeops.trust.pubkeys import as_verify_key, ed25519_keyid, load_verify_key, verify_key_from_dict, verify_keys_from_field


def _pem(private) -> bytes:
    return private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_pub_json_loads_with_the_same_keyid_and_key(tmp_path):
    sslib = generate_key(tmp_path, "command-1")
    key = load_verify_key(tmp_path / "command-1.pub.json")
    assert key.keyid == sslib.keyid == load_public_key(tmp_path / "command-1.pub.json").keyid
    assert key.public.hex() == sslib.keyval["public"]
    assert key.to_dict() == {"keytype": sslib.keytype, "scheme": sslib.scheme, "keyval": sslib.keyval}


def test_pem_keyid_matches_securesystemslib(tmp_path):
    private = Ed25519PrivateKey.generate()
    (tmp_path / "k.pem").write_bytes(_pem(private))
    key = load_verify_key(tmp_path / "k.pem")
    assert key.keyid == SSlibKey.from_crypto(private.public_key()).keyid
    assert key.keyid == ed25519_keyid(key.public)


def test_verify_accepts_good_signatures_and_refuses_tampered_ones():
    signer = CryptoSigner.generate_ed25519()
    key = as_verify_key(signer.public_key)
    message = b"DSSEv1 payload"
    sig = bytes.fromhex(signer.sign(message).signature)
    assert key.verify(sig, message)
    assert not key.verify(sig, message + b"x")  # tampered message
    flipped = bytes([sig[0] ^ 1]) + sig[1:]
    assert not key.verify(flipped, message)  # tampered signature
    assert not key.verify(sig[:63], message)  # truncated signature
    assert not key.verify(b"", message)
    other = as_verify_key(CryptoSigner.generate_ed25519().public_key)
    assert not other.verify(sig, message)  # another key


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"keytype": "rsa", "scheme": "rsassa-pss-sha256", "keyval": {"public": "00" * 32}}, "not ed25519"),
        ({"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": "zz" * 32}}, "64 lowercase hex"),
        ({"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": "00" * 31}}, "64 lowercase hex"),
        ({"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": "AB" * 32}}, "64 lowercase hex"),
        ({"keytype": "ed25519", "scheme": "ed25519"}, "keyval.public"),
        ("a string", "JSON object"),
    ],
)
def test_malformed_key_dicts_name_the_source(data, fragment):
    with pytest.raises(errors.KeyFileError, match=fragment) as info:
        verify_key_from_dict("abc", data, "keys/command-1.pub.json")
    assert "keys/command-1.pub.json" in str(info.value)


def test_key_files_that_are_not_ed25519_public_keys(tmp_path):
    ec_pem = tmp_path / "ec.pem"
    ec_pem.write_bytes(_pem(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(errors.KeyFileError, match="not an Ed25519"):
        load_verify_key(ec_pem)
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN PUBLIC KEY-----\n!!!\n-----END PUBLIC KEY-----\n")
    with pytest.raises(errors.KeyFileError, match="PEM"):
        load_verify_key(junk)
    (tmp_path / "nokeyid.pub.json").write_text(json.dumps({"keytype": "ed25519"}))
    with pytest.raises(errors.KeyFileError, match="nokeyid.pub.json: missing key id"):
        load_verify_key(tmp_path / "nokeyid.pub.json")
    with pytest.raises(errors.KeyFileError, match="cannot read"):
        load_verify_key(tmp_path / "missing.pub.json")


def test_root_field_keys_malformed_is_malformed_metadata():
    good = {"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": "11" * 32}}
    assert [k.keyid for k in verify_keys_from_field({"kid": good}, "root.json")] == ["kid"]
    with pytest.raises(errors.MalformedMetadataError):
        verify_keys_from_field({"kid": {**good, "keytype": "ecdsa"}}, "root.json")
    with pytest.raises(errors.MalformedMetadataError):
        verify_keys_from_field(["not", "a", "mapping"], "root.json")
