#!/bin/sh
# gen.sh — regenerate the JWT test fixtures for tests/unit/test_auth.c.
#
# Writes, next to this script:
#   rsa_priv.pem / rsa_pub.pem   RSA 2048 key pair (kid "rsa1")
#   ec_priv.pem  / ec_pub.pem    EC P-256 key pair (kid "ec1")
#   jwks.json                    the two public keys plus a random 32-byte
#                                oct key (kid "hs1") as a JWKS document
#
# Only the openssl CLI and python3's standard library are used: openssl
# prints the RSA modulus in hex and the EC public key as SubjectPublicKeyInfo
# DER, whose last 65 bytes are the uncompressed point 04 || x || y; python3
# turns those into unpadded base64url. The test reads the HMAC secret back
# from jwks.json, so nothing else needs to be kept in sync.
#
# These keys are test data only; they are committed so test runs are
# reproducible and need no key generation at build time.
set -eu
cd "$(dirname "$0")"

openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa_priv.pem 2>/dev/null
openssl pkey -in rsa_priv.pem -pubout -out rsa_pub.pem
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ec_priv.pem
openssl pkey -in ec_priv.pem -pubout -out ec_pub.pem

RSA_N_HEX=$(openssl rsa -pubin -in rsa_pub.pem -noout -modulus | sed 's/^Modulus=//')
EC_PT_HEX=$(openssl pkey -pubin -in ec_pub.pem -outform DER | tail -c 65 | od -An -v -tx1 | tr -d ' \n')
HS_K_HEX=$(openssl rand -hex 32)

RSA_N_HEX="$RSA_N_HEX" EC_PT_HEX="$EC_PT_HEX" HS_K_HEX="$HS_K_HEX" python3 - <<'PY' > jwks.json
import base64, json, os

def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

n = bytes.fromhex(os.environ["RSA_N_HEX"])
pt = bytes.fromhex(os.environ["EC_PT_HEX"])
assert len(pt) == 65 and pt[0] == 4, "unexpected EC point encoding"
k = bytes.fromhex(os.environ["HS_K_HEX"])

doc = {"keys": [
    {"kty": "RSA", "kid": "rsa1", "use": "sig", "alg": "RS256",
     "n": b64u(n), "e": b64u((65537).to_bytes(3, "big"))},
    {"kty": "EC", "kid": "ec1", "use": "sig", "alg": "ES256", "crv": "P-256",
     "x": b64u(pt[1:33]), "y": b64u(pt[33:65])},
    {"kty": "oct", "kid": "hs1", "k": b64u(k)},
]}
print(json.dumps(doc, indent=2))
PY
echo "wrote rsa_priv.pem rsa_pub.pem ec_priv.pem ec_pub.pem jwks.json"
