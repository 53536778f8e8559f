"""weft gateway edge features (docs/gateway.md, "Edge features"): rate
limiting, API-key and JWT authentication, the response cache (with
coalescing), gzip compression and aggregation.

Origins come from gwutil (`origins` fixture); this module only teaches an
origin to answer with chosen headers and bodies (serve()), driven by the
request's query string so that every URL is its own cache key:

    cc=VALUE       Cache-Control           vary=VALUE   Vary
    ct=TYPE        Content-Type            ce=VALUE     Content-Encoding
    sc=1           Set-Cookie              size=N       body of about N bytes
    chunked=1      Transfer-Encoding: chunked (length unknown)
    serial=1       the body carries a per-origin counter (tells a fresh
                   answer from a cached one)
    echo=NAME      the body carries the request's NAME header
    status=N       status code

Every gateway is started by gwutil's `gateway` fixture, which SIGTERMs it at
teardown and fails the test on a non-zero exit or a sanitizer report.
"""
import base64
import gzip
import hashlib
import hmac
import itertools
import json
import socket
import subprocess
import threading
import time
import urllib.parse
import zlib

import pytest

import weftutil
from gwutil import (REPO, Client, closed_port, gateway, metric, origins,  # noqa: F401
                    parallel, wait_until)

AUTH_DIR = REPO / "tests" / "unit" / "data" / "auth"
JWKS_PATH = AUTH_DIR / "jwks.json"
ISSUER = "https://auth.example.com"


# ====================================================================== origin replies

def make_body(q, serial=None, echo=None):
    """The exact body the customised origin sends for query dict q."""
    size = int(q.get("size", "0"))
    ct = q.get("ct", "application/json")
    if ct.startswith("text/"):
        line = b"the quick brown fox jumps over the lazy dog %08d\n"
        out = bytearray()
        i = 0
        while len(out) < size:
            out += line % i
            i += 1
        return bytes(out[:size]) if size else b"text\n"
    if ct == "application/octet-stream" or q.get("ce"):
        return bytes((i * 7 + 3) % 251 for i in range(size or 16))
    head = {"serial": serial, "echo": echo}
    doc = json.dumps({**head, "pad": ""}, separators=(",", ":"))
    pad = max(0, size - len(doc))  # exactly `size` bytes (unless the head is longer)
    return json.dumps({**head, "pad": "x" * pad}, separators=(",", ":")).encode()


def serve(origin):
    """Make `origin` answer requests with a query string as described in the
    module docstring (other requests get gwutil's default JSON answer).
    Works through the origin's own request loop, so modes (sleep, status...)
    and request recording are unchanged."""
    base = origin._respond
    counter = itertools.count(1)

    def respond(c, rec, status, body, keep, ctype="application/json"):
        if not rec.query:
            return base(c, rec, status, body, keep, ctype)
        q = dict(urllib.parse.parse_qsl(rec.query, keep_blank_values=True))
        serial = next(counter) if q.get("serial") else None
        echo = rec.header(q["echo"], "<absent>") if q.get("echo") else None
        data = make_body(q, serial, echo)
        st = int(q.get("status", status))
        h = [f"HTTP/1.1 {st} {'OK' if st == 200 else 'Status'}",
             f"Content-Type: {q.get('ct', 'application/json')}", f"X-Origin: {origin.name}"]
        for key, name in (("cc", "Cache-Control"), ("vary", "Vary"), ("ce", "Content-Encoding"),
                          ("etag", "ETag")):
            if key in q:
                h.append(f"{name}: {q[key]}")
        if q.get("sc"):
            h.append("Set-Cookie: session=abc; Path=/")
        chunked = bool(q.get("chunked"))
        h.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(data)}")
        if not keep:
            h.append("Connection: close")
        c.sendall(("\r\n".join(h) + "\r\n\r\n").encode("latin-1"))
        if rec.method == "HEAD":
            return
        if not chunked:
            c.sendall(data)
            return
        for i in range(0, len(data), 65536):
            part = data[i:i + 65536]
            c.sendall(b"%x\r\n" % len(part) + part + b"\r\n")
        c.sendall(b"0\r\n\r\n")

    origin._respond = respond
    return origin


def url(path, **q):
    return path + "?" + urllib.parse.urlencode(q) if q else path


# ====================================================================== JWT helpers

def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def b64u_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def _jwk(kid):
    for k in json.loads(JWKS_PATH.read_text())["keys"]:
        if k.get("kid") == kid:
            return k
    raise AssertionError(f"no kid {kid} in {JWKS_PATH}")


HS_SECRET = b64u_decode(_jwk("hs1")["k"])


def _openssl_sign(pem, data):
    r = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(pem)], input=data,
                       capture_output=True, timeout=20)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout


def _der_len(b, i):
    n = b[i]
    if n < 0x80:
        return n, i + 1
    k = n & 0x7F
    return int.from_bytes(b[i + 1:i + 1 + k], "big"), i + 1 + k


def der_ecdsa_to_raw(der, size=32):
    """DER SEQUENCE { INTEGER r, INTEGER s } -> r || s, each left-padded."""
    assert der[0] == 0x30, der.hex()
    _, i = _der_len(der, 1)
    out = b""
    for _ in range(2):
        assert der[i] == 0x02, der.hex()
        n, i = _der_len(der, i + 1)
        v = der[i:i + n].lstrip(b"\x00")
        i += n
        assert len(v) <= size
        out += v.rjust(size, b"\x00")
    return out


def make_jwt(claims, alg="HS256", kid=None, header=None, secret=None, sign=True):
    hdr = {"alg": alg, "typ": "JWT"}
    if kid is not False:
        hdr["kid"] = kid or {"HS256": "hs1", "RS256": "rsa1", "ES256": "ec1"}.get(alg, "hs1")
    if header:
        hdr.update(header)
    si = (b64u(json.dumps(hdr, separators=(",", ":")).encode()) + "." +
          b64u(json.dumps(claims, separators=(",", ":")).encode())).encode()
    if not sign:
        return si.decode() + "."
    if alg == "HS256":
        sig = hmac.new(secret or HS_SECRET, si, hashlib.sha256).digest()
    elif alg == "RS256":
        sig = _openssl_sign(AUTH_DIR / "rsa_priv.pem", si)
    elif alg == "ES256":
        sig = der_ecdsa_to_raw(_openssl_sign(AUTH_DIR / "ec_priv.pem", si))
    else:
        raise ValueError(alg)
    return si.decode() + "." + b64u(sig)


def claims(**over):
    now = int(time.time())
    c = {"iss": ISSUER, "aud": "api", "sub": "user-42", "scope": "read", "iat": now,
         "exp": now + 300}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def bearer(tok):
    return [("Authorization", f"Bearer {tok}")]


def key_hash(key):
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


# ====================================================================== rate limiting

RL_CONF = """
clusters:
  a:
    endpoints: [{A}]
routes:
  - name: rl-ip
    match: {{prefix: /ip/}}
    cluster: a
    rate_limit: {{requests_per_second: 5, burst: 5, key: client_ip}}
  - name: rl-rate
    match: {{prefix: /rate/}}
    cluster: a
    rate_limit: {{requests_per_second: 5, burst: 5, key: client_ip}}
  - name: rl-tenant
    match: {{prefix: /tenant/}}
    cluster: a
    rate_limit: {{requests_per_second: 1, burst: 3, key: "header:X-Tenant"}}
  - name: rl-key
    match: {{prefix: /key/}}
    cluster: a
    rate_limit: {{requests_per_second: 1, burst: 2, key: api_key}}
    auth:
      api_keys:
        keys:
          - {{name: alice, hash: "{ALICE}"}}
          - {{name: bob, hash: "{BOB}"}}
"""


def rl_gateway(gateway, origins, workers=1):
    (o,) = origins(1)
    g = gateway(RL_CONF.format(A=o.addr, ALICE=key_hash("alice-key"), BOB=key_hash("bob-key")),
                workers=workers)
    return g, o


def test_ratelimit_burst_then_429_then_refill(gateway, origins):
    g, o = rl_gateway(gateway, origins)
    with Client(g.port) as c:
        first = [c.get("/ip/a") for _ in range(5)]
        denied = c.get("/ip/a")
    for i, r in enumerate(first):
        assert r.status == 200, (i, r)
        assert r.header("RateLimit-Limit") == "5", r
        assert r.header("RateLimit-Remaining") == str(4 - i), (i, r)
        assert r.header("RateLimit-Reset") is not None, r
        assert r.header("Retry-After") is None, r
    assert denied.status == 429, denied
    assert int(denied.header("Retry-After")) >= 1, denied
    assert denied.header("RateLimit-Limit") == "5", denied
    assert denied.header("RateLimit-Remaining") == "0", denied
    assert int(denied.header("RateLimit-Reset")) >= 1, denied
    assert o.count() == 5
    # one second refills the 5 tokens (rate 5/s, capped at burst 5)
    time.sleep(1.05)
    with Client(g.port) as c:
        again = [c.get("/ip/a").status for _ in range(8)]
    allowed = again.count(200)
    assert 5 <= allowed <= 6, again
    assert set(again) == {200, 429}, again
    assert again[:5] == [200] * 5, again
    m = g.metrics()
    n429 = 1 + again.count(429)
    assert metric(m, "weft_gateway_rate_limited_total", route="rl-ip") == n429
    assert o.count() == 5 + allowed  # rejected requests never reach the origin


def test_ratelimit_sustained_rate(gateway, origins):
    """50 attempts/s for 3 s against 5/s burst 5: about 5 + 5*3 pass."""
    g, o = rl_gateway(gateway, origins)
    statuses = []
    with Client(g.port) as c:
        t0 = time.monotonic()
        for i in range(150):
            wait = t0 + i * 0.02 - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            statuses.append(c.get("/rate/x").status)
        elapsed = time.monotonic() - t0
    assert set(statuses) <= {200, 429}, statuses
    allowed = statuses.count(200)
    assert elapsed < 3.6, elapsed
    assert abs(allowed - 20) <= 2, (allowed, elapsed, statuses)
    # after the burst the 200s keep coming at the rate: about 5 in each later second
    assert abs(statuses[50:100].count(200) - 5) <= 1, statuses
    assert abs(statuses[100:].count(200) - 5) <= 1, statuses
    assert metric(g.metrics(), "weft_gateway_rate_limited_total",
                  route="rl-rate") == statuses.count(429)
    assert o.count() == allowed


def test_ratelimit_client_ip_keys_are_independent(gateway, origins):
    g, o = rl_gateway(gateway, origins)
    with Client(g.port, source_ip="127.0.0.1") as c:
        a = [c.get("/ip/x").status for _ in range(6)]
    with Client(g.port, source_ip="127.0.0.2") as c:
        b = [c.get("/ip/x").status for _ in range(6)]
    # the key is the peer address: a client-sent X-Forwarded-For does not
    # buy a fresh bucket
    with Client(g.port, source_ip="127.0.0.1") as c:
        spoof = [c.get("/ip/x", [("X-Forwarded-For", f"10.0.0.{i}")]).status for i in range(3)]
    assert a == [200] * 5 + [429], a
    assert b == [200] * 5 + [429], b
    assert spoof == [429] * 3, spoof
    assert o.count() == 10


def test_ratelimit_header_key_tenants_independent(gateway, origins):
    g, o = rl_gateway(gateway, origins)
    with Client(g.port) as c:
        t1 = [c.get("/tenant/x", [("X-Tenant", "t1")]).status for _ in range(4)]
        t2 = [c.get("/tenant/x", [("X-Tenant", "t2")]).status for _ in range(4)]
        t1b = c.get("/tenant/x", [("X-Tenant", "t1")])
        # requests without the header share one bucket
        none = [c.get("/tenant/x").status for _ in range(4)]
    assert t1 == [200, 200, 200, 429], t1
    assert t2 == [200, 200, 200, 429], t2
    assert t1b.status == 429 and t1b.header("RateLimit-Limit") == "3", t1b
    assert none == [200, 200, 200, 429], none
    assert o.count() == 9
    assert metric(g.metrics(), "weft_gateway_rate_limited_total", route="rl-tenant") == 4


def test_ratelimit_api_key_key(gateway, origins):
    g, o = rl_gateway(gateway, origins)
    with Client(g.port) as c:
        alice = [c.get("/key/x", [("X-API-Key", "alice-key")]).status for _ in range(3)]
        bob = [c.get("/key/x", [("X-API-Key", "bob-key")]).status for _ in range(3)]
    assert alice == [200, 200, 429], alice
    assert bob == [200, 200, 429], bob
    assert [r.header("X-Weft-Consumer") for r in o.recs()] == ["alice", "alice", "bob", "bob"]
    assert metric(g.metrics(), "weft_gateway_rate_limited_total", route="rl-key") == 2


def test_ratelimit_shared_across_workers(gateway, origins):
    """The bucket is shared: 40 requests over 8 connections and 2 workers
    still let only the burst (plus what refills meanwhile) through."""
    g, o = rl_gateway(gateway, origins, workers=2)
    t0 = time.monotonic()
    rs = parallel(g.port, 40, concurrency=8, target="/ip/w")
    elapsed = time.monotonic() - t0
    allowed = sum(1 for r in rs if r.status == 200)
    assert {r.status for r in rs} == {200, 429}, [r.status for r in rs]
    assert 5 <= allowed <= 5 + int(elapsed * 5) + 1, (allowed, elapsed)
    assert o.count() == allowed
    assert metric(g.metrics(), "weft_gateway_rate_limited_total", route="rl-ip") == 40 - allowed


# ====================================================================== API keys

KEYS_CONF = """
clusters:
  a:
    endpoints: [{A}]
routes:
  - name: keyed
    match: {{prefix: /k/}}
    cluster: a
    auth:
      api_keys:
        header: X-API-Key
        keys:
          - {{name: alice, hash: "{ALICE}"}}
          - {{name: bob, hash: "{BOB}"}}
  - name: qkeyed
    match: {{prefix: /q/}}
    cluster: a
    auth:
      api_keys:
        query: api_key
        keys:
          - {{name: carol, hash: "{CAROL}"}}
"""


@pytest.fixture
def keys_gw(gateway, origins):
    (o,) = origins(1)
    g = gateway(KEYS_CONF.format(A=o.addr, ALICE=key_hash("alice-secret-1"),
                                 BOB=key_hash("bob-secret-2"), CAROL=key_hash("carol-3")))
    return g, o


def test_api_key_missing_and_wrong_are_401(keys_gw):
    g, o = keys_gw
    for hdrs in ([], [("X-API-Key", "")], [("X-API-Key", "nope")],
                 [("X-API-Key", "alice-secret-1x")], [("X-Api-Key", "ALICE-SECRET-1")],
                 [("X-Other", "alice-secret-1")]):
        r = g.get("/k/x", hdrs)
        assert r.status == 401, (hdrs, r)
        www = r.header("WWW-Authenticate")
        assert www is not None and 'realm="weft"' in www, (hdrs, r)
    assert o.count() == 0


def test_api_key_valid_forwards_consumer(keys_gw):
    g, o = keys_gw
    r = g.get("/k/x", [("X-API-Key", "alice-secret-1")])
    assert r.status == 200, r
    assert o.last().header_all("X-Weft-Consumer") == ["alice"]
    r = g.get("/k/y", [("x-api-key", "bob-secret-2")])
    assert r.status == 200, r
    assert o.last().header_all("X-Weft-Consumer") == ["bob"]
    assert o.count() == 2


def test_api_key_consumer_header_cannot_be_spoofed(keys_gw):
    g, o = keys_gw
    r = g.get("/k/x", [("X-Weft-Consumer", "admin"), ("X-API-Key", "alice-secret-1"),
                       ("x-weft-consumer", "root")])
    assert r.status == 200, r
    assert o.last().header_all("X-Weft-Consumer") == ["alice"], o.last()
    r = g.get("/k/x", [("X-Weft-Consumer", "admin")])
    assert r.status == 401, r
    assert o.count() == 1


def test_api_key_in_query_param(keys_gw):
    g, o = keys_gw
    r = g.get("/q/x?a=1&api_key=carol-3")
    assert r.status == 200, r
    assert o.last().header_all("X-Weft-Consumer") == ["carol"]
    for target in ("/q/x", "/q/x?api_key=", "/q/x?api_key=carol-4", "/q/x?apikey=carol-3"):
        r = g.get(target)
        assert r.status == 401, (target, r)
        assert r.header("WWW-Authenticate") is not None, r
    assert o.count() == 1


BAD_HASH_CONF = """\
clusters:
  a:
    endpoints: [127.0.0.1:9001]
routes:
  - name: keyed
    cluster: a
    auth:
      api_keys:
        keys:
          - name: alice
            hash: "{HASH}"
"""


@pytest.mark.parametrize("bad", [
    "md5:" + "0" * 32,
    "sha256:" + "0" * 63,
    "sha256:" + "g" * 64,
    hashlib.sha256(b"k").hexdigest(),
])
def test_api_key_hash_format_checked(tmp_path, bad):
    p = tmp_path / "gw.yaml"
    p.write_text(BAD_HASH_CONF.format(HASH=bad))
    r = weftutil.run_weft("gateway", "--check", "-c", str(p))
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    # the hash value is on line 11, column 19
    assert f"{p}:11:19:" in out, out
    assert "sha256" in out, out
    # the good form passes
    p.write_text(BAD_HASH_CONF.format(HASH=key_hash("k")))
    r = weftutil.run_weft("gateway", "--check", "-c", str(p))
    assert r.returncode == 0, r.stdout + r.stderr


# ====================================================================== JWT

JWT_CONF = """
clusters:
  a:
    endpoints: [{A}]
routes:
  - name: jwt
    match: {{prefix: /jwt/}}
    cluster: a
    auth:
      jwt:
        jwks: {JWKS}
        issuer: {ISS}
        audiences: [api, api2]
        require_claims: {{scope: read}}
        forward_claims: {{sub: X-User, tenant: X-Tenant-Id}}
  - name: jwt-es
    match: {{prefix: /es/}}
    cluster: a
    auth:
      jwt:
        jwks: {JWKS}
        algorithms: [ES256]
        forward_claims: {{sub: X-User}}
  - name: jwt-leeway
    match: {{prefix: /lw/}}
    cluster: a
    auth:
      jwt:
        jwks: {JWKS}
        leeway: 30s
"""


@pytest.fixture
def jwt_gw(gateway, origins):
    (o,) = origins(1)
    g = gateway(JWT_CONF.format(A=o.addr, JWKS=JWKS_PATH, ISS=ISSUER))
    return g, o


@pytest.mark.parametrize("alg", ["HS256", "RS256", "ES256"])
def test_jwt_valid_token_forwards_claims(jwt_gw, alg):
    g, o = jwt_gw
    tok = make_jwt(claims(tenant=7), alg)
    r = g.get("/jwt/x", bearer(tok))
    assert r.status == 200, r
    rec = o.last()
    assert rec.header_all("X-User") == ["user-42"], rec
    assert rec.header_all("X-Tenant-Id") == ["7"], rec
    # second audience, no kid: every key of the alg's type is tried
    r = g.get("/jwt/y", bearer(make_jwt(claims(aud=["other", "api2"]), alg, kid=False)))
    assert r.status == 200, r
    assert o.count() == 2


def test_jwt_claim_headers_cannot_be_spoofed(jwt_gw):
    g, o = jwt_gw
    r = g.get("/jwt/x", [("X-User", "admin"), ("x-tenant-id", "1")] +
              bearer(make_jwt(claims(), "HS256")) + [("x-user", "root")])
    assert r.status == 200, r
    rec = o.last()
    assert rec.header_all("X-User") == ["user-42"], rec
    assert rec.header_all("X-Tenant-Id") == [], rec  # no tenant claim: nothing forwarded
    # a token without the claim: the client's header is still dropped
    r = g.get("/jwt/x", [("X-User", "admin")] + bearer(make_jwt(claims(sub=None), "RS256")))
    assert r.status == 200, r
    assert o.last().header_all("X-User") == [], o.last()


def _www(r):
    return r.header("WWW-Authenticate") or ""


def test_jwt_missing_or_non_bearer_is_401(jwt_gw):
    g, o = jwt_gw
    r = g.get("/jwt/x")
    assert r.status == 401, r
    assert _www(r) == 'Bearer realm="weft"', r
    for v in ("Basic dXNlcjpwYXNz", "Token abc", "Bearer", "Bearer ", "bearer"):
        r = g.get("/jwt/x", [("Authorization", v)])
        assert r.status == 401, (v, r)
        assert _www(r).startswith('Bearer realm="weft"'), (v, r)
    assert o.count() == 0


def test_jwt_expired(jwt_gw):
    g, o = jwt_gw
    now = int(time.time())
    r = g.get("/jwt/x", bearer(make_jwt(claims(exp=now - 120, iat=now - 600), "RS256")))
    assert r.status == 401, r
    assert 'error="invalid_token"' in _www(r), r
    assert 'error_description="token expired"' in _www(r), r
    assert _www(r).startswith('Bearer realm="weft"'), r
    assert o.count() == 0


@pytest.mark.parametrize("case", ["bad_hmac", "tampered_rs", "tampered_es", "wrong_kid_type",
                                  "wrong_aud", "no_aud", "wrong_iss", "nbf_future", "alg_none",
                                  "alg_none_unsigned", "garbage", "unknown_kid", "hs_with_rsa"])
def test_jwt_invalid_tokens_are_401(jwt_gw, case):
    g, o = jwt_gw
    now = int(time.time())
    if case == "bad_hmac":
        tok = make_jwt(claims(), "HS256", secret=b"s" * 32)
    elif case in ("tampered_rs", "tampered_es"):
        good = make_jwt(claims(), "RS256" if case == "tampered_rs" else "ES256")
        h, _, s = good.split(".")
        tok = ".".join([h, b64u(json.dumps(claims(sub="admin")).encode()), s])
    elif case == "wrong_kid_type":
        tok = make_jwt(claims(), "HS256", kid="rsa1")
    elif case == "wrong_aud":
        tok = make_jwt(claims(aud="other"), "HS256")
    elif case == "no_aud":
        tok = make_jwt(claims(aud=None), "HS256")
    elif case == "wrong_iss":
        tok = make_jwt(claims(iss="https://evil.example.com"), "ES256")
    elif case == "nbf_future":
        tok = make_jwt(claims(nbf=now + 600), "HS256")
    elif case == "alg_none":
        tok = make_jwt(claims(), "none", kid=False, sign=False)
    elif case == "alg_none_unsigned":
        tok = make_jwt(claims(), "HS256", sign=False)
    elif case == "garbage":
        tok = "abc.def.ghi"
    elif case == "unknown_kid":
        tok = make_jwt(claims(), "HS256", kid="nope")
    elif case == "hs_with_rsa":
        # alg confusion: HMAC over the token with the RSA public key's modulus as the secret
        tok = make_jwt(claims(), "HS256", kid="rsa1", secret=b64u_decode(_jwk("rsa1")["n"]))
    r = g.get("/jwt/x", bearer(tok))
    assert r.status == 401, (case, r)
    assert _www(r).startswith('Bearer realm="weft"'), r
    assert 'error="invalid_token"' in _www(r), r
    if case == "nbf_future":
        assert 'error_description="token not yet valid"' in _www(r), r
    assert o.count() == 0


def test_jwt_required_claim(jwt_gw):
    g, o = jwt_gw
    r = g.get("/jwt/x", bearer(make_jwt(claims(scope="write"), "HS256")))
    assert r.status == 403, r
    assert 'error="insufficient_scope"' in _www(r), r
    for bad in ("reader", "", ["write"], None, "writeread"):
        r = g.get("/jwt/x", bearer(make_jwt(claims(scope=bad), "HS256")))
        assert r.status == 403, (bad, r)
    assert o.count() == 0
    for good in ("read write", "write read", "admin  read", ["write", "read"]):
        r = g.get("/jwt/x", bearer(make_jwt(claims(scope=good), "ES256")))
        assert r.status == 200, (good, r)
    assert o.count() == 4


def test_jwt_algorithms_restricted(jwt_gw):
    g, o = jwt_gw
    for alg in ("HS256", "RS256"):
        r = g.get("/es/x", bearer(make_jwt(claims(), alg)))
        assert r.status == 401, (alg, r)
        assert 'error="invalid_token"' in _www(r), r
    assert o.count() == 0
    r = g.get("/es/x", bearer(make_jwt(claims(), "ES256")))
    assert r.status == 200, r
    assert o.last().header_all("X-User") == ["user-42"]


def test_jwt_leeway(jwt_gw):
    g, o = jwt_gw
    now = int(time.time())
    assert g.get("/lw/x", bearer(make_jwt(claims(exp=now - 10), "HS256"))).status == 200
    assert g.get("/lw/x", bearer(make_jwt(claims(nbf=now + 10), "HS256"))).status == 200
    r = g.get("/lw/x", bearer(make_jwt(claims(exp=now - 90), "HS256")))
    assert r.status == 401 and 'error_description="token expired"' in _www(r), r
    r = g.get("/lw/x", bearer(make_jwt(claims(nbf=now + 90), "HS256")))
    assert r.status == 401 and 'error_description="token not yet valid"' in _www(r), r
    assert o.count() == 2


def test_jwt_claim_with_control_characters_not_forwarded(jwt_gw):
    g, o = jwt_gw
    tok = make_jwt(claims(sub="eve\r\nX-Injected: 1", tenant="t\n1"), "HS256")
    r = g.get("/jwt/x", bearer(tok))
    assert r.status == 200, r
    rec = o.last()
    assert rec.header_all("X-Injected") == [], rec
    assert rec.header_all("X-User") == [] and rec.header_all("X-Tenant-Id") == [], rec


# ====================================================================== cache

CACHE_CONF = """
{TOP}
clusters:
  a:
    endpoints: [{A}]
routes:
  - name: c
    match: {{prefix: /c/}}
    cluster: a
    cache: {{ttl: 60s}}
  - name: cdefault
    match: {{prefix: /d/}}
    cluster: a
    cache: true
  - name: cz
    match: {{prefix: /cz/}}
    cluster: a
    cache: {{ttl: 60s}}
    compress: true
  - name: cauthz
    match: {{prefix: /ca/}}
    cluster: a
    cache: {{ttl: 60s, authorized: true}}
  - name: ckeyed
    match: {{prefix: /ck/}}
    cluster: a
    cache: {{ttl: 60s}}
    auth:
      api_keys:
        keys: [{{name: alice, hash: "{ALICE}"}}, {{name: bob, hash: "{BOB}"}}]
"""


def cache_gw(gateway, origins, top="", workers=1):
    (o,) = origins(1)
    serve(o)
    return gateway(CACHE_CONF.format(A=o.addr, TOP=top, ALICE=key_hash("alice-secret-1"),
                                   BOB=key_hash("bob-secret-2")),
                   workers=workers), o


def lookups(g, result):
    return metric(g.metrics(), "weft_gateway_cache_lookups_total", result=result)


def test_cache_miss_then_hit(gateway, origins):
    g, o = cache_gw(gateway, origins)
    u = url("/c/plain", serial=1)
    with Client(g.port) as c:
        r1 = c.get(u)
        r2 = c.get(u)
        r3 = c.get(u)
    assert r1.status == 200 and r1.header("X-Cache") == "MISS", r1
    assert r1.header("Age") is None, r1
    for r in (r2, r3):
        assert r.status == 200 and r.header("X-Cache") == "HIT", r
        assert int(r.header("Age")) >= 0, r
        assert r.body == r1.body, (r.body, r1.body)
        assert r.header("Content-Type") == "application/json", r
        assert r.header("X-Origin") == "o0", r
    assert json.loads(r1.body)["serial"] == 1
    assert o.count() == 1
    assert lookups(g, "hit") == 2 and lookups(g, "miss") == 1
    # another target is another key
    r4 = g.get(url("/c/plain", serial=1, other=1))
    assert r4.header("X-Cache") == "MISS" and o.count() == 2


def test_cache_true_uses_default_ttl(gateway, origins):
    """`cache: true` caches a response without Cache-Control (default ttl)."""
    g, o = cache_gw(gateway, origins)
    u = url("/d/plain", serial=1)
    with Client(g.port) as c:
        r1 = c.get(u)
        r2 = c.get(u)
    assert r1.status == 200 and r1.header("X-Cache") == "MISS", r1
    assert r2.header("X-Cache") == "HIT", r2
    assert r2.body == r1.body
    assert o.count() == 1


@pytest.mark.parametrize("q", [
    {"cc": "no-store"},
    {"cc": "private"},
    {"cc": "private, max-age=60"},
    {"cc": "no-cache"},
    {"cc": "max-age=0"},
    {"sc": "1"},
    {"vary": "*"},
    {"status": "500"},
], ids=lambda q: "-".join(f"{k}={v}" for k, v in q.items()))
def test_cache_not_stored(gateway, origins, q):
    g, o = cache_gw(gateway, origins)
    u = url("/c/ns", serial=1, **q)
    with Client(g.port) as c:
        rs = [c.get(u) for _ in range(3)]
    assert [r.header("X-Cache") for r in rs] == ["MISS"] * 3, rs
    assert [json.loads(r.body)["serial"] for r in rs] == [1, 2, 3]
    assert o.count() == 3


def test_cache_max_age_expires(gateway, origins):
    g, o = cache_gw(gateway, origins)
    short = url("/c/ma", serial=1, cc="max-age=1")
    long_ = url("/c/ma", serial=1, cc="public, s-maxage=60, max-age=1")
    with Client(g.port) as c:
        assert c.get(short).header("X-Cache") == "MISS"
        assert c.get(long_).header("X-Cache") == "MISS"
        h = c.get(short)
        assert h.header("X-Cache") == "HIT", h
        time.sleep(1.2)
        m = c.get(short)
        assert m.header("X-Cache") == "MISS", m
        assert json.loads(m.body)["serial"] == 3
        # s-maxage wins over max-age; Age counts seconds since storage
        h2 = c.get(long_)
        assert h2.header("X-Cache") == "HIT", h2
        assert int(h2.header("Age")) >= 1, h2
        assert json.loads(h2.body)["serial"] == 2
    assert o.count() == 3


def test_cache_request_bypass(gateway, origins):
    g, o = cache_gw(gateway, origins)
    u = url("/c/bp", serial=1)
    with Client(g.port) as c:
        assert c.get(u).header("X-Cache") == "MISS"
        assert c.get(u).header("X-Cache") == "HIT"
        for h in ([("Cache-Control", "no-cache")], [("Cache-Control", "no-store")],
                  [("Authorization", "Bearer abc")]):
            r = c.get(u, h)
            assert r.status == 200 and r.header("X-Cache") != "HIT", (h, r)
            assert json.loads(r.body)["serial"] > 1, (h, r)
        assert o.count() == 4
        # the bypassing answers did not replace the stored one
        r = c.get(u)
        assert r.header("X-Cache") == "HIT" and json.loads(r.body)["serial"] == 1, r
    assert o.count() == 4


def test_cache_vary_accept_encoding(gateway, origins):
    g, o = cache_gw(gateway, origins)
    u = url("/c/v", serial=1, vary="Accept-Encoding", echo="Accept-Encoding")
    gz, br = [("Accept-Encoding", "gzip")], [("Accept-Encoding", "br")]
    with Client(g.port) as c:
        a1, b1, n1 = c.get(u, gz), c.get(u, br), c.get(u)
        a2, b2, n2 = c.get(u, gz), c.get(u, br), c.get(u)
    assert [r.header("X-Cache") for r in (a1, b1, n1)] == ["MISS"] * 3
    assert [r.header("X-Cache") for r in (a2, b2, n2)] == ["HIT"] * 3
    assert json.loads(a2.body)["echo"] == "gzip" and a2.body == a1.body
    assert json.loads(b2.body)["echo"] == "br" and b2.body == b1.body
    assert json.loads(n2.body)["echo"] == "<absent>" and n2.body == n1.body
    assert o.count() == 3


def test_cache_post_never_cached(gateway, origins):
    g, o = cache_gw(gateway, origins)
    u = url("/c/p", serial=1)
    with Client(g.port) as c:
        p1 = c.request("POST", u, body=b"{}")
        p2 = c.request("POST", u, body=b"{}")
        r = c.get(u)
    assert p1.status == 200 and p2.status == 200
    assert p1.header("X-Cache") != "HIT" and p2.header("X-Cache") != "HIT", (p1, p2)
    assert json.loads(p2.body)["serial"] == 2
    assert r.header("X-Cache") == "MISS" and json.loads(r.body)["serial"] == 3, r
    assert o.count() == 3


def test_cache_coalescing(gateway, origins):
    g, o = cache_gw(gateway, origins)
    o.set_mode("sleep", delay_ms=500)
    before = {k: lookups(g, k) for k in ("hit", "miss", "coalesced")}
    t0 = time.monotonic()
    rs = parallel(g.port, 10, concurrency=10, target=url("/c/coal", serial=1))
    elapsed = time.monotonic() - t0
    assert [r.status for r in rs] == [200] * 10, rs
    assert len({r.body for r in rs}) == 1, [r.body for r in rs]
    assert json.loads(rs[0].body)["serial"] == 1
    assert o.count() == 1, o.recs()
    assert sorted(r.header("X-Cache") for r in rs) == ["HIT"] * 9 + ["MISS"], rs
    assert elapsed < 2.0, elapsed
    after = {k: lookups(g, k) for k in ("hit", "miss", "coalesced")}
    assert after["coalesced"] - before["coalesced"] == 9, (before, after)
    assert after["miss"] - before["miss"] == 1, (before, after)


def test_cache_coalesced_upstream_failure_is_not_shared_as_hit(gateway, origins):
    """A coalesced fetch whose answer is not storable (503) is not handed to
    the waiters as a hit: they fetch themselves, and nothing is stored."""
    g, o = cache_gw(gateway, origins)
    o.set_mode("status", status=503)
    rs = parallel(g.port, 4, concurrency=4, target=url("/c/fail", serial=1))
    assert all(r.status == 503 for r in rs), rs
    assert all(r.header("X-Cache") != "HIT" for r in rs), rs
    o.set_mode("ok")
    r = g.get(url("/c/fail", serial=1))
    assert r.status == 200 and r.header("X-Cache") == "MISS", r


def test_cache_authorized_routes(gateway, origins):
    g, o = cache_gw(gateway, origins)
    authz = [("Authorization", "Bearer abc")]
    with Client(g.port) as c:
        # authorized: true lets requests with Authorization use the cache
        a1, a2 = c.get(url("/ca/x", serial=1), authz), c.get(url("/ca/x", serial=1), authz)
        assert a1.header("X-Cache") == "MISS" and a2.header("X-Cache") == "HIT", (a1, a2)
        assert a2.body == a1.body
        # a cached answer is still behind the route's authentication
        k = [("X-API-Key", "alice-secret-1")]
        r1, r2 = c.get(url("/ck/x", serial=1), k), c.get(url("/ck/x", serial=1), k)
        assert r1.header("X-Cache") == "MISS" and r2.header("X-Cache") == "HIT", (r1, r2)
        for h in ([], [("X-API-Key", "wrong")]):
            r = c.get(url("/ck/x", serial=1), h)
            assert r.status == 401 and r.header("X-Cache") is None, (h, r)
            assert b"serial" not in r.body, r
    assert o.count() == 2


def test_cache_api_key_consumers_do_not_share_entries(gateway, origins):
    """On an API-key route the upstream is told who asks (X-Weft-Consumer)
    and may answer per consumer: without `authorized: true` one consumer's
    cached answer must never be served to another."""
    g, o = cache_gw(gateway, origins)
    u = url("/ck/me", serial=1, echo="X-Weft-Consumer")
    alice, bob = [("X-API-Key", "alice-secret-1")], [("X-API-Key", "bob-secret-2")]
    with Client(g.port) as c:
        a1, b1, a2, b2 = c.get(u, alice), c.get(u, bob), c.get(u, alice), c.get(u, bob)
    assert json.loads(a1.body)["echo"] == "alice" and a1.header("X-Cache") == "MISS", a1
    assert json.loads(b1.body)["echo"] == "bob" and b1.header("X-Cache") == "MISS", b1
    # each consumer still gets its own hits
    assert a2.header("X-Cache") == "HIT" and a2.body == a1.body, a2
    assert b2.header("X-Cache") == "HIT" and b2.body == b1.body, b2
    assert o.count() == 2


def test_cache_lru_bound(gateway, origins):
    g, o = cache_gw(gateway, origins, top="cache: {max_bytes: 64KiB, policy: lru}")
    urls = [url(f"/c/lru{i}", size=8192) for i in range(20)]
    with Client(g.port) as c:
        for u in urls:
            r = c.get(u)
            assert r.status == 200 and r.header("X-Cache") == "MISS", r
            assert len(r.body) == 8192
        assert o.count() == 20
        last = c.get(urls[-1])
        assert last.header("X-Cache") == "HIT", last
        assert last.body == make_body({"size": "8192"})
        assert o.count() == 20
        for u in urls[:3]:
            r = c.get(u)
            assert r.header("X-Cache") == "MISS", (u, r)  # evicted
            assert r.body == make_body({"size": "8192"})
        assert o.count() == 23
        # an entry over a quarter of the cache is streamed, never stored
        big = url("/c/big", size=20000)
        for _ in range(2):
            r = c.get(big)
            assert r.header("X-Cache") == "MISS" and r.body == make_body({"size": "20000"}), r
    assert o.count() == 25


def test_cache_hit_compressed_for_gzip_clients(gateway, origins):
    g, o = cache_gw(gateway, origins)
    u = url("/cz/j", size=2000)
    want = make_body({"size": "2000"})
    with Client(g.port) as c:
        m = c.get(u, [("Accept-Encoding", "gzip")])
        h = c.get(u, [("Accept-Encoding", "gzip")])
        i = c.get(u)
    assert m.header("X-Cache") == "MISS" and m.header("Content-Encoding") == "gzip", m
    assert gzip.decompress(m.body) == want
    assert h.header("X-Cache") == "HIT" and h.header("Content-Encoding") == "gzip", h
    assert gzip.decompress(h.body) == want
    assert i.header("X-Cache") == "HIT" and i.header("Content-Encoding") is None, i
    assert i.body == want
    assert o.count() == 1


def test_cache_head_miss_does_not_poison_get(gateway, origins):
    """A HEAD answer has no body: a later GET must still get the full body
    (and the proxied HEAD itself is answered)."""
    g, o = cache_gw(gateway, origins)
    u = url("/c/head", size=500)
    want = make_body({"size": "500"})
    s = weftutil.connect(g.port)
    s.sendall(weftutil.request_bytes("HEAD", u))
    try:
        head = weftutil.Reader(s).read_response(method="HEAD")
    except EOFError as e:
        head = f"connection closed without an answer ({e})"
    finally:
        s.close()
    with Client(g.port) as c:
        r = c.get(u)
        r2 = c.get(u)
    assert r.status == 200 and r.body == want, ("GET after a HEAD miss", r)
    assert r2.body == want, r2
    assert not isinstance(head, str) and head.status == 200, head
    assert head.header("Content-Length") == "500", head


def test_cache_hit_serves_head(gateway, origins):
    g, o = cache_gw(gateway, origins)
    u = url("/c/gethead", size=700)
    with Client(g.port) as c:
        assert c.get(u).header("X-Cache") == "MISS"
        h = c.request("HEAD", u)
        assert h.status == 200 and h.header("X-Cache") == "HIT", h
        assert h.header("Content-Length") == "700", h
        r = c.get(u)  # the keep-alive connection is still in sync
        assert r.header("X-Cache") == "HIT" and r.body == make_body({"size": "700"}), r
    assert o.count() == 1


def test_cache_coalescing_honours_vary(gateway, origins):
    """Waiters coalesced behind a fetch whose answer varies on
    Accept-Encoding get their own representation, not the fetcher's."""
    g, o = cache_gw(gateway, origins)
    o.set_mode("sleep", delay_ms=400)
    u = url("/c/cv", vary="Accept-Encoding", echo="Accept-Encoding")
    aes = ["gzip"] + ["br"] * 4
    rs = [None] * len(aes)

    def one(i):
        with Client(g.port) as c:
            rs[i] = c.get(u, [("Accept-Encoding", aes[i])])

    ts = [threading.Thread(target=one, args=(0,))]
    ts[0].start()
    wait_until(lambda: o.count() >= 1, what="first fetch upstream")
    for i in range(1, len(aes)):
        ts.append(threading.Thread(target=one, args=(i,)))
        ts[-1].start()
    for t in ts:
        t.join(10)
    for ae, r in zip(aes, rs):
        assert r is not None and r.status == 200, r
        assert json.loads(r.body)["echo"] == ae, (ae, r)


def test_cache_waiters_disconnecting(gateway, origins):
    """Coalesced waiters that go away before the fill are dropped cleanly."""
    g, o = cache_gw(gateway, origins)
    o.set_mode("sleep", delay_ms=400)
    u = url("/c/gone", serial=1)
    socks = []
    for _ in range(6):
        s = weftutil.connect(g.port)
        s.sendall(weftutil.request_bytes("GET", u))
        socks.append(s)
    time.sleep(0.1)
    for s in socks[1:]:
        s.close()
    r = weftutil.Reader(socks[0]).read_response()
    socks[0].close()
    assert r.status == 200, r
    time.sleep(0.1)
    r = g.get(u)
    assert r.header("X-Cache") == "HIT" and json.loads(r.body)["serial"] == 1, r
    assert o.count() == 1


def test_cache_head_during_pending_fetch_keeps_coalescing(gateway, origins):
    """A HEAD that arrives while a GET fetch is in flight goes upstream on
    its own; it must not release the GETs coalesced behind that fetch (they
    would all go upstream too: one miss, many fetches)."""
    g, o = cache_gw(gateway, origins)
    o.set_mode("sleep", delay_ms=600)
    u = url("/c/headcoal", serial=1)
    rs = [None] * 5

    def one(i):
        with Client(g.port) as c:
            rs[i] = c.get(u)

    ts = [threading.Thread(target=one, args=(0,))]
    ts[0].start()
    wait_until(lambda: o.count() >= 1, what="the first GET upstream")
    before = lookups(g, "coalesced")
    for i in range(1, len(rs)):
        ts.append(threading.Thread(target=one, args=(i,)))
        ts[-1].start()
    wait_until(lambda: lookups(g, "coalesced") - before >= len(rs) - 1, what="GETs coalesced")
    with Client(g.port) as c:
        h = c.request("HEAD", u)
    for t in ts:
        t.join(10)
    assert h.status == 200, h
    assert all(r is not None and r.status == 200 for r in rs), rs
    assert [json.loads(r.body)["serial"] for r in rs] == [1] * len(rs), rs
    assert o.count(method="GET") == 1, o.recs()


def test_cache_hit_applies_route_response_headers(gateway, origins):
    """A hit is answered with the same header treatment as the miss that
    stored it: the route's response_headers set/add/remove and the
    hop-by-hop rules hold for cached answers too."""
    (o,) = origins(1)
    o.extra_headers = [("X-Internal", "secret"), ("X-Set-Me", "origin"),
                       ("Connection", "X-Hop"), ("X-Hop", "hop-secret"), ("Upgrade", "h2c")]
    g = gateway(f"""
clusters:
  a:
    endpoints: [{o.addr}]
routes:
  - name: c
    match: {{prefix: /c/}}
    cluster: a
    cache: {{ttl: 60s}}
    response_headers:
      set: {{X-Set-Me: gateway}}
      add: {{X-Added: "1"}}
      remove: [X-Internal]
""")
    with Client(g.port) as c:
        rs = [c.get("/c/hdrs") for _ in range(2)]
    assert [r.header("X-Cache") for r in rs] == ["MISS", "HIT"], rs
    for r in rs:
        assert r.status == 200, r
        assert r.header("X-Internal") is None, r
        assert r.header("X-Hop") is None and r.header("Upgrade") is None, r
        assert r.header("X-Set-Me") == "gateway", r
        assert r.header("X-Added") == "1", r
    assert rs[1].body == rs[0].body
    assert o.count() == 1


def test_cache_lfu_keeps_popular_entry(gateway, origins):
    g, o = cache_gw(gateway, origins, top="cache: {max_bytes: 64KiB, policy: lfu}")
    hot = url("/c/hot", size=8192)
    with Client(g.port) as c:
        assert c.get(hot).header("X-Cache") == "MISS"
        for _ in range(5):
            assert c.get(hot).header("X-Cache") == "HIT"
        for i in range(20):
            assert c.get(url(f"/c/cold{i}", size=8192)).header("X-Cache") == "MISS"
        r = c.get(hot)
        assert r.header("X-Cache") == "HIT", r
        assert r.body == make_body({"size": "8192"})
    assert o.count() == 21


# ====================================================================== compression

ZCONF = """
clusters:
  a:
    endpoints: [{A}]
routes:
  - name: z
    match: {{prefix: /z/}}
    cluster: a
    compress: true
  - name: zmin
    match: {{prefix: /zmin/}}
    cluster: a
    compress: {{min_size: 1000}}
  - name: plain
    match: {{prefix: /p/}}
    cluster: a
"""


@pytest.fixture
def zgw(gateway, origins):
    (o,) = origins(1)
    serve(o)
    return gateway(ZCONF.format(A=o.addr)), o


def vary_has_ae(r):
    return any("accept-encoding" in v.lower() for v in r.header_all("Vary"))


def test_gzip_json(zgw):
    g, o = zgw
    q = {"size": "3000"}
    want = make_body(q)
    r = g.get(url("/z/j", **q), [("Accept-Encoding", "gzip")])
    assert r.status == 200, r
    assert r.header("Content-Encoding") == "gzip", r
    assert vary_has_ae(r), r
    assert len(r.body) < len(want)
    assert gzip.decompress(r.body) == want
    assert r.header("Content-Type") == "application/json", r
    if r.header("Content-Length") is not None:
        assert int(r.header("Content-Length")) == len(r.body), r


@pytest.mark.parametrize("ae,gz", [
    (None, False),
    ("gzip", True),
    ("GZIP", True),
    ("deflate, gzip;q=0.5", True),
    ("gzip; q=1.0, br", True),
    ("*", True),
    ("gzip;q=0", False),
    ("gzip; q=0.000", False),
    ("br", False),
    ("identity", False),
    ("deflate, br;q=0.9", False),
])
def test_gzip_accept_encoding(zgw, ae, gz):
    g, o = zgw
    q = {"size": "1500", "ct": "text/plain; charset=utf-8"}
    want = make_body(q)
    r = g.get(url("/z/t", **q), [("Accept-Encoding", ae)] if ae is not None else [])
    assert r.status == 200, r
    if gz:
        assert r.header("Content-Encoding") == "gzip", (ae, r)
        assert gzip.decompress(r.body) == want
    else:
        assert r.header("Content-Encoding") is None, (ae, r)
        assert r.header("Content-Length") == str(len(want)), (ae, r)
        assert r.header("Transfer-Encoding") is None, (ae, r)
        assert r.body == want


@pytest.mark.parametrize("ct,gz", [
    ("text/html", True),
    ("application/json; charset=utf-8", True),
    ("application/problem+json", True),
    ("application/atom+xml", True),
    ("application/rss+xml; charset=utf-8", True),
    ("application/vnd.api+json", True),
    ("application/xml", True),
    ("image/svg+xml", True),
    ("application/javascript", True),
    ("application/octet-stream", False),
    ("image/png", False),
])
def test_gzip_content_types(zgw, ct, gz):
    g, o = zgw
    q = {"size": "2000", "ct": ct}
    want = make_body(q)
    r = g.get(url("/z/ct", **q), [("Accept-Encoding", "gzip")])
    assert r.status == 200, r
    if gz:
        assert r.header("Content-Encoding") == "gzip", (ct, r)
        assert gzip.decompress(r.body) == want
    else:
        assert r.header("Content-Encoding") is None, (ct, r)
        assert r.header("Content-Length") == str(len(want)), r
        assert r.body == want


def test_gzip_min_size_and_non_2xx(zgw):
    g, o = zgw
    gzh = [("Accept-Encoding", "gzip")]
    for path, size, gz in (("/z/s", 100, False), ("/z/s", 255, False), ("/z/s", 256, True),
                           ("/zmin/s", 800, False), ("/zmin/s", 1200, True)):
        q = {"size": str(size), "ct": "text/plain"}
        r = g.get(url(path, **q), gzh)
        assert r.status == 200, r
        assert (r.header("Content-Encoding") == "gzip") == gz, (path, size, r)
        body = gzip.decompress(r.body) if gz else r.body
        assert body == make_body(q), (path, size)
    # unknown length (chunked) is compressed whatever the size
    q = {"size": "100", "ct": "text/plain", "chunked": "1"}
    r = g.get(url("/zmin/c", **q), gzh)
    assert r.header("Content-Encoding") == "gzip", r
    assert gzip.decompress(r.body) == make_body(q)
    # errors are not compressed
    q = {"size": "2000", "status": "404"}
    r = g.get(url("/z/e", **q), gzh)
    assert r.status == 404 and r.header("Content-Encoding") is None, r
    assert r.body == make_body(q)
    # a route without compress never compresses
    r = g.get(url("/p/x", size=3000), gzh)
    assert r.header("Content-Encoding") is None and r.body == make_body({"size": "3000"}), r


@pytest.mark.parametrize("etag,ae,want", [
    ('"v1"', "gzip", 'W/"v1"'),      # gzipped: no longer the upstream's bytes
    ('"v1"', None, '"v1"'),          # passed through unchanged
    ('W/"v1"', "gzip", 'W/"v1"'),    # already weak
])
def test_gzip_weakens_a_strong_etag(zgw, etag, ae, want):
    """A response the gateway gzips is a different representation from the
    upstream's, so a strong ETag is weakened (as nginx does); uncompressed
    answers keep it."""
    g, o = zgw
    q = {"size": "3000", "etag": etag}
    r = g.get(url("/z/e", **q), [("Accept-Encoding", ae)] if ae else [])
    assert r.status == 200, r
    assert (r.header("Content-Encoding") == "gzip") == (ae == "gzip"), r
    assert r.header_all("ETag") == [want], r


def test_cache_hit_gzip_weakens_a_strong_etag(gateway, origins):
    """The same for cache hits compressed for gzip clients."""
    g, o = cache_gw(gateway, origins)
    q = {"size": "3000", "etag": '"v2"'}
    m = g.get(url("/cz/e", **q))
    assert m.header("X-Cache") == "MISS" and m.header_all("ETag") == ['"v2"'], m
    h = g.get(url("/cz/e", **q), [("Accept-Encoding", "gzip")])
    assert h.header("X-Cache") == "HIT" and h.header("Content-Encoding") == "gzip", h
    assert h.header_all("ETag") == ['W/"v2"'], h
    p = g.get(url("/cz/e", **q))
    assert p.header("X-Cache") == "HIT" and p.header_all("ETag") == ['"v2"'], p


def test_gzip_already_encoded_passes_through(zgw):
    g, o = zgw
    q = {"size": "4000", "ct": "text/plain", "ce": "br"}
    want = make_body(q)
    r = g.get(url("/z/br", **q), [("Accept-Encoding", "gzip, br")])
    assert r.status == 200, r
    assert r.header_all("Content-Encoding") == ["br"], r
    assert r.body == want
    assert r.header("Content-Length") == str(len(want)), r


def test_gzip_large_streamed_body(zgw):
    g, o = zgw
    n = 5 * 1024 * 1024
    q = {"size": str(n), "ct": "text/plain", "chunked": "1"}
    want = hashlib.sha256(make_body(q)).hexdigest()
    r = g.get(url("/z/big", **q), [("Accept-Encoding", "gzip")], timeout=60)
    assert r.status == 200, r.status
    assert r.header("Content-Encoding") == "gzip"
    assert r.header("Transfer-Encoding") == "chunked"
    assert len(r.body) < n // 4, len(r.body)
    out = zlib.decompress(r.body, 16 + zlib.MAX_WBITS)
    assert len(out) == n
    assert hashlib.sha256(out).hexdigest() == want
    # and with a known length
    q = {"size": str(n), "ct": "text/plain"}
    r = g.get(url("/z/big2", **q), [("Accept-Encoding", "gzip")], timeout=60)
    assert r.header("Content-Encoding") == "gzip"
    assert hashlib.sha256(gzip.decompress(r.body)).hexdigest() == want


def test_gzip_client_abort_mid_stream(zgw):
    """A client that leaves during a large compressed answer: the gateway
    frees the stream (teardown checks for leaks) and keeps serving."""
    g, o = zgw
    q = {"size": str(8 * 1024 * 1024), "ct": "text/plain", "chunked": "1"}
    for _ in range(3):
        s = weftutil.connect(g.port)
        s.sendall(weftutil.request_bytes("GET", url("/z/abort", **q),
                                         [("Accept-Encoding", "gzip")]))
        rd = weftutil.Reader(s)
        rd.read_head()
        s.recv(1000)
        s.close()
    r = g.get(url("/z/after", size=1000), [("Accept-Encoding", "gzip")])
    assert r.status == 200 and gzip.decompress(r.body) == make_body({"size": "1000"}), r


# ====================================================================== aggregation

AGG_CONF = """
clusters:
  good:
    endpoints: [{G}]
  bad:
    endpoints: [{B}]
  slow:
    endpoints: [{S}]
  gone:
    endpoints: [{X}]
routes:
  - name: agg
    match: {{path: /agg}}
    aggregate:
      parts:
        - {{name: user, cluster: good, path: /users/42, timeout: 1s}}
        - {{name: prices, cluster: bad, path: /prices/42, timeout: 1s, fallback: '{{"items": []}}'}}
        - {{name: stock, cluster: slow, path: /stock/42, timeout: 300ms}}
  - name: agg-misc
    match: {{path: /agg-misc}}
    aggregate:
      parts:
        - {{name: text, cluster: good, path: "/t?ct=text/plain", timeout: 1s, fallback: '"n/a"'}}
        - {{name: down, cluster: gone, path: /x, timeout: 1s, fallback: '0'}}
        - {{name: num, cluster: good, path: /n, timeout: 1s}}
  - name: agg-par
    match: {{path: /agg-par}}
    aggregate:
      parts:
        - {{name: a, cluster: good, path: /a, timeout: 2s}}
        - {{name: b, cluster: bad, path: /b, timeout: 2s}}
        - {{name: c, cluster: slow, path: /c, timeout: 2s}}
  - name: agg-big
    match: {{path: /agg-big}}
    aggregate:
      parts:
        - {{name: big, cluster: bad, path: "/big?n=3000000", timeout: 5s,
           fallback: '{{"too": "big"}}'}}
        - {{name: small, cluster: good, path: /s, timeout: 2s}}
"""


@pytest.fixture
def agg_gw(gateway, origins):
    good, bad, slow = origins(3)
    serve(good)
    g = gateway(AGG_CONF.format(G=good.addr, B=bad.addr, S=slow.addr,
                                X=f"127.0.0.1:{closed_port()}"))
    return g, good, bad, slow


def test_aggregate_partial(agg_gw):
    g, good, bad, slow = agg_gw
    bad.set_mode("status", status=500)
    slow.set_mode("sleep", delay_ms=1500)
    t0 = time.monotonic()
    r = g.get("/agg")
    elapsed = time.monotonic() - t0
    assert r.status == 200, r
    assert r.header("X-Weft-Partial") == "true", r
    assert r.header("Content-Type", "").startswith("application/json"), r
    body = r.json()
    assert set(body) == {"user", "prices", "stock", "_errors"}, body
    assert body["user"] == {"origin": "o0", "method": "GET", "target": "/users/42", "len": 0}
    assert body["prices"] == {"items": []}
    assert body["stock"] is None
    errs = body["_errors"]
    assert set(errs) == {"prices", "stock"}, errs
    assert "500" in errs["prices"], errs
    assert "timed out" in errs["stock"], errs
    # the answer comes at the slow part's timeout, not the origin's delay
    assert 0.25 <= elapsed < 1.2, elapsed
    assert good.count() == 1 and bad.count() == 1 and slow.count() == 1


def test_aggregate_all_ok(agg_gw):
    g, good, bad, slow = agg_gw
    r = g.get("/agg")
    assert r.status == 200, r
    assert r.header("X-Weft-Partial") is None, r
    body = r.json()
    assert set(body) == {"user", "prices", "stock"}, body
    assert body["prices"] == {"origin": "o1", "method": "GET", "target": "/prices/42", "len": 0}
    assert body["stock"]["target"] == "/stock/42"


def test_aggregate_non_json_and_unreachable(agg_gw):
    g, good, bad, slow = agg_gw
    r = g.get("/agg-misc")
    assert r.status == 200, r
    assert r.header("X-Weft-Partial") == "true", r
    body = r.json()
    assert body["text"] == "n/a"
    assert body["down"] == 0
    assert body["num"]["target"] == "/n"
    assert set(body["_errors"]) == {"text", "down"}, body
    assert "JSON" in body["_errors"]["text"], body


def test_aggregate_parts_run_in_parallel(agg_gw):
    g, good, bad, slow = agg_gw
    for o in (good, bad, slow):
        o.set_mode("sleep", delay_ms=300)
    t0 = time.monotonic()
    r = g.get("/agg-par")
    elapsed = time.monotonic() - t0
    assert r.status == 200, r
    assert r.header("X-Weft-Partial") is None, r
    assert [r.json()[k]["target"] for k in "abc"] == ["/a", "/b", "/c"], r
    assert 0.3 <= elapsed < 0.8, elapsed
    t = [o.last().t for o in (good, bad, slow)]
    assert max(t) - min(t) < 0.2, t


def test_aggregate_propagates_request_id(agg_gw):
    g, good, bad, slow = agg_gw
    r = g.get("/agg", [("X-Request-Id", "edge-req-0042")])
    assert r.status == 200, r
    assert r.header("X-Request-Id") == "edge-req-0042", r
    for o in (good, bad, slow):
        assert o.last().header_all("X-Request-Id") == ["edge-req-0042"], o.last()
    # without one, a generated id is shared by the answer and every part
    r = g.get("/agg")
    rid = r.header("X-Request-Id")
    assert rid, r
    for o in (good, bad, slow):
        assert o.last().header("X-Request-Id") == rid, o.last()


def test_aggregate_oversized_part(agg_gw):
    """A part body over the per-part bound is a failed part, not a crash."""
    g, good, bad, slow = agg_gw
    r = g.get("/agg-big")
    assert r.status == 200, r
    assert r.header("X-Weft-Partial") == "true", r
    body = r.json()
    assert body["big"] == {"too": "big"}, body
    assert body["small"]["target"] == "/s"
    assert set(body["_errors"]) == {"big"}, body


def test_aggregate_client_abort(agg_gw):
    g, good, bad, slow = agg_gw
    slow.set_mode("sleep", delay_ms=800)
    for _ in range(3):
        s = weftutil.connect(g.port)
        s.sendall(weftutil.request_bytes("GET", "/agg-par"))
        time.sleep(0.05)
        s.close()
    slow.set_mode("ok")
    r = g.get("/agg-par")
    assert r.status == 200 and r.header("X-Weft-Partial") is None, r


class Drip:
    """An upstream that answers the head at once and then sends its JSON
    body one byte every `every` seconds (at most `seconds` long)."""

    def __init__(self, every=0.15, seconds=4.0):
        self.every, self.seconds = every, seconds
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(8)
        self.ls.settimeout(0.2)
        self.stop = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    @property
    def addr(self):
        return f"127.0.0.1:{self.ls.getsockname()[1]}"

    def _run(self):
        while not self.stop.is_set():
            try:
                c, _ = self.ls.accept()
            except OSError:
                continue
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        try:
            c.settimeout(5)
            buf = b""
            while b"\r\n\r\n" not in buf:
                d = c.recv(4096)
                if not d:
                    return
                buf += d
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n1\r\n[\r\n")
            end = time.monotonic() + self.seconds
            while time.monotonic() < end and not self.stop.is_set():
                time.sleep(self.every)
                c.sendall(b"1\r\n \r\n")
            c.sendall(b"1\r\n]\r\n0\r\n\r\n")
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self.stop.set()
        self.ls.close()
        self.t.join(2)


def test_aggregate_part_timeout_bounds_a_slow_body(gateway, origins):
    """A part's timeout bounds the whole part: an upstream that answers the
    head at once and then trickles the body (never idle for the timeout)
    still gets the fallback at the timeout, not when it finally ends."""
    (good,) = origins(1)
    drip = Drip()
    try:
        parts = ('[{name: user, cluster: good, path: /u, timeout: 1s},'
                 ' {name: slow, cluster: drip, path: /s, timeout: 500ms, fallback: \'"late"\'}]')
        g = gateway(f"clusters: {{good: {{endpoints: [{good.addr}]}},"
                    f" drip: {{endpoints: [{drip.addr}]}}}}\n"
                    f"routes: [{{name: agg, match: {{path: /agg}}, aggregate: {{parts: {parts}}}}}]\n")
        t0 = time.monotonic()
        r = g.get("/agg", timeout=10)
        elapsed = time.monotonic() - t0
    finally:
        drip.close()
    assert r.status == 200, r
    body = r.json()
    assert body["slow"] == "late", body
    assert body["user"]["target"] == "/u", body
    assert "timed out" in body["_errors"]["slow"], body
    assert elapsed < 1.5, elapsed


def test_jwt_sub_second_leeway_rounds_up(gateway, origins):
    # leeway was cut to whole seconds, so 500ms meant none. Tokens' exp and
    # the gateway's clock are whole seconds: a token with exp = this second
    # is expired without leeway and valid with 1 s, as long as the request
    # is made in the same second (we start early in one).
    (o,) = origins(1)
    route = "  - match: {{prefix: /{p}/}}\n    cluster: a\n    auth:\n      jwt:\n" \
            "        jwks: {JWKS}\n{extra}"
    conf = f"clusters:\n  a:\n    endpoints: [{o.addr}]\nroutes:\n" + \
        route.format(p="lw0", JWKS=JWKS_PATH, extra="") + \
        route.format(p="lw5", JWKS=JWKS_PATH, extra="        leeway: 500ms\n")
    g = gateway(conf)
    for path, want in (("/lw0/x", 401), ("/lw5/x", 200)):
        while time.time() % 1 > 0.3:
            time.sleep(0.05)
        now = int(time.time())
        r = g.get(path, bearer(make_jwt(claims(iat=now - 60, exp=now), "HS256")))
        assert int(time.time()) == now, "the second rolled over: too slow to test"
        assert r.status == want, (path, r)
