"""weft gateway routing: match conditions, first match wins, direct and
redirect actions, path rewriting, header edits and the headers the gateway
adds or drops on the way upstream."""
import re

import pytest

from gwutil import Origin, _GatewayFactory, gateway, origin_of, origins  # noqa: F401

ROUTES = """
clusters:
  a:
    endpoints: [{A}]
  b:
    endpoints: [{B}]
routes:
  - name: exact
    match: {{path: /exact}}
    cluster: a
  - name: methods
    match: {{prefix: /m/, methods: [PUT, DELETE]}}
    cluster: b
  - name: prefix
    match: {{prefix: /m/}}
    cluster: a
  - name: host-exact
    match: {{prefix: /h/, host: api.example.org}}
    cluster: b
  - name: host-wild
    match: {{prefix: /h/, host: "*.example.com"}}
    cluster: a
  - name: hdr-exact
    match: {{prefix: /hdr/, headers: {{X-Env: staging}}}}
    direct: {{status: 200, body: "exact"}}
  - name: hdr-present
    match: {{prefix: /hdr/, headers: {{X-Debug: {{present: true}}}}}}
    direct: {{status: 200, body: "present"}}
  - name: hdr-absent
    match: {{prefix: /hdr/, headers: {{X-Block: {{absent: true}}}}}}
    direct: {{status: 200, body: "absent"}}
  - name: query
    match: {{path: /q, query: {{v: "2"}}}}
    direct: {{status: 200, body: "q-v2"}}
  - name: first
    match: {{prefix: /first/}}
    direct: {{status: 200, body: "first"}}
  - name: second
    match: {{prefix: /first/second}}
    direct: {{status: 200, body: "second"}}
  - name: teapot
    match: {{path: /teapot}}
    direct: {{status: 418, body: "short and stout\\n", content_type: text/x-tea}}
  - name: moved
    match: {{prefix: /old/}}
    redirect: {{location: "https://new.example.com/v2/", status: 308}}
  - name: rewrite
    match: {{prefix: /api/catalog/}}
    cluster: a
    strip_prefix: /api/catalog
    prefix_rewrite: /v1
  - name: strip
    match: {{prefix: /svc/}}
    cluster: b
    strip_prefix: /svc
  - name: edits
    match: {{prefix: /hx/}}
    cluster: a
    timeout: 3s
    request_headers:
      set: {{X-Gateway: weft}}
      add: {{X-Added: "yes"}}
      remove: [X-Debug, X-Secret-In]
    response_headers:
      set: {{X-Set-Me: gateway}}
      add: {{X-Served-By: weft}}
      remove: [X-Internal]
"""


# Regex matchers (path, header, query) live in their own gateway so that a
# problem specific to regex matching is reported against these tests only.
REGEX_ROUTES = """
clusters:
  b:
    endpoints: [{B}]
routes:
  - name: regex
    match: {{regex: "^/items/[0-9]+$"}}
    cluster: b
  - name: hdr-regex
    match: {{prefix: /hdr/, headers: {{X-Env: {{regex: "^prod-[a-z]+$"}}}}}}
    direct: {{status: 200, body: "regex"}}
  - name: query-re
    match: {{path: /q, query: {{currency: {{regex: "^[A-Z]{{3}}$"}}}}}}
    direct: {{status: 200, body: "q-currency"}}
  - name: hdr-one-char
    match: {{prefix: /one/, headers: {{X-Tag: {{regex: "^a.$"}}}}}}
    direct: {{status: 200, body: "one"}}
"""


@pytest.fixture
def regex_gw(gateway, origins):
    b, = origins(1)
    return gateway(REGEX_ROUTES.format(B=b.addr)), b


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    a, b = Origin("A"), Origin("B")
    a.extra_headers = [("X-Set-Me", "origin"), ("X-Internal", "secret"), ("X-Kept", "1")]
    f = _GatewayFactory(str(tmp_path_factory.mktemp("gwroute")))
    g = f(ROUTES.format(A=a.addr, B=b.addr))
    yield g, a, b
    try:
        f.teardown()
    finally:
        a.stop()
        b.stop()


def send(g, method, target, headers=None, body=b""):
    with g.client() as c:
        return c.request(method, target, headers, body)


def test_exact_path(env):
    g, a, b = env
    r = send(g, "GET", "/exact")
    assert r.status == 200 and origin_of(r) == "A"
    assert a.last().target == "/exact"
    assert send(g, "GET", "/exact/more").status == 404
    assert send(g, "GET", "/exac").status == 404


def test_prefix_and_methods(env):
    g, a, b = env
    for method, want in (("GET", "A"), ("POST", "A"), ("PUT", "B"), ("DELETE", "B"),
                         ("PATCH", "A")):
        r = send(g, method, "/m/thing")
        assert r.status == 200, (method, r)
        assert origin_of(r) == want, (method, r)
    assert b.last().method == "DELETE"


def test_regex_path(regex_gw):
    g, b = regex_gw
    r = send(g, "GET", "/items/12345")
    assert r.status == 200 and origin_of(r) == b.name
    assert b.last().target == "/items/12345"
    for t in ("/items/12x", "/items/", "/items/1/2", "/x/items/1"):
        assert send(g, "GET", t).status == 404, t


def test_host_match_exact_and_wildcard_port_ignored(env):
    g, a, b = env
    cases = [("api.example.org", "B"), ("api.example.org:8443", "B"),
             ("shop.example.com", "A"), ("a.b.example.com:80", "A")]
    for host, want in cases:
        r = send(g, "GET", "/h/x", [("Host", host)])
        assert r.status == 200 and origin_of(r) == want, (host, r)
    for host in ("example.com", "api.example.org.evil", "xexample.com", "other.org"):
        assert send(g, "GET", "/h/x", [("Host", host)]).status == 404, host


def test_absolute_form_target_routes_and_forwards_its_authority(env):
    """An absolute-form target's authority is the request's host (RFC 9112
    3.2.2: the Host header is then ignored): routing, the Host sent
    upstream and X-Forwarded-Host all use it, so a front proxy and the
    gateway cannot disagree on the virtual host."""
    g, a, b = env
    r = send(g, "GET", "http://api.example.org/h/x", [("Host", "shop.example.com")])
    assert r.status == 200 and origin_of(r) == "B", r
    last = b.last()
    assert last.target == "/h/x"
    assert last.header("Host") == "api.example.org"
    assert last.header("X-Forwarded-Host") == "api.example.org"
    r = send(g, "GET", "http://shop.example.com/h/y", [("Host", "api.example.org")])
    assert r.status == 200 and origin_of(r) == "A", r
    assert a.last().header("Host") == "shop.example.com"


def test_header_match_exact_present_absent(env):
    g, a, b = env
    cases = [
        ([("X-Env", "staging")], b"exact"),
        ([("X-Env", "staging2"), ("X-Debug", "")], b"present"),   # exact fails
        ([("X-Env", "Staging")], b"absent"),                      # exact is case-sensitive
        ([], b"absent"),
    ]
    for hs, want in cases:
        r = send(g, "GET", "/hdr/x", hs)
        assert r.status == 200 and r.body == want, (hs, r)
    # X-Block present and nothing else matches: no route
    assert send(g, "GET", "/hdr/x", [("X-Block", "1")]).status == 404


def test_query_match(env):
    g, a, b = env
    assert send(g, "GET", "/q?v=2").body == b"q-v2"
    assert send(g, "GET", "/q?a=1&v=2&z=").body == b"q-v2"
    for t in ("/q", "/q?v=3", "/q?v=22", "/q?w=2"):
        assert send(g, "GET", t).status == 404, t


def test_header_regex_match(regex_gw):
    g, b = regex_gw
    assert send(g, "GET", "/hdr/x", [("X-Env", "prod-eu")]).body == b"regex"
    for v in ("prod-EU", "prod-", "xprod-eu"):
        assert send(g, "GET", "/hdr/x", [("X-Env", v)]).status == 404, v
    assert send(g, "GET", "/hdr/x").status == 404


def test_header_regex_invalid_utf8(regex_gw):
    """Header values may carry any obs-text byte, so they are not always
    UTF-8: an invalid sequence is never a character (a lone lead byte must
    not swallow the bytes after it, or run past the value's end)."""
    g, b = regex_gw
    # the client sends header text as latin-1: "\xc3\xa9" is the bytes of é
    assert send(g, "GET", "/one/x", [("X-Tag", "a\xc3\xa9")]).body == b"one"
    for v in ("a\xc3b", "a\xf0", "a\xe2\x82", "a\xff"):
        assert send(g, "GET", "/one/x", [("X-Tag", v)]).status == 404, repr(v)


def test_query_regex_match(regex_gw):
    g, b = regex_gw
    assert send(g, "GET", "/q?currency=EUR").body == b"q-currency"
    assert send(g, "GET", "/q?x=1&currency=USD").body == b"q-currency"
    for t in ("/q", "/q?currency=eur", "/q?currency=EURO", "/q?cur=EUR"):
        assert send(g, "GET", t).status == 404, t


def test_first_match_wins(env):
    g, a, b = env
    # /first/second matches both; the earlier route wins
    assert send(g, "GET", "/first/second").body == b"first"


def test_no_route_is_404(env):
    g, a, b = env
    n = a.count() + b.count()
    r = send(g, "GET", "/nothing/here")
    assert r.status == 404
    assert r.header("X-Origin") is None
    assert a.count() + b.count() == n


def test_direct_response(env):
    g, a, b = env
    r = send(g, "GET", "/teapot")
    assert r.status == 418
    assert r.body == b"short and stout\n"
    assert r.header("Content-Type") == "text/x-tea"
    assert r.header("Content-Length") == str(len(b"short and stout\n"))


def test_redirect(env):
    g, a, b = env
    n = a.count() + b.count()
    r = send(g, "GET", "/old/page?x=1")
    assert r.status == 308
    assert r.header("Location") == "https://new.example.com/v2/"
    assert a.count() + b.count() == n


def test_strip_prefix_and_prefix_rewrite(env):
    g, a, b = env
    r = send(g, "GET", "/api/catalog/items/42?x=1&y=two%20words")
    assert r.status == 200 and origin_of(r) == "A"
    assert a.last().target == "/v1/items/42?x=1&y=two%20words"
    r = send(g, "GET", "/svc/deep/path?q=%2F")
    assert r.status == 200 and origin_of(r) == "B"
    assert b.last().target == "/deep/path?q=%2F"


def test_request_and_response_header_edits(env):
    g, a, b = env
    r = send(g, "GET", "/hx/1", [("X-Gateway", "client"), ("X-Added", "client"),
                                 ("X-Debug", "1"), ("X-Secret-In", "s"), ("X-Other", "keep")])
    assert r.status == 200 and origin_of(r) == "A"
    rec = a.last()
    assert rec.header_all("X-Gateway") == ["weft"], rec
    assert rec.header_all("X-Added") == ["client", "yes"], rec
    assert rec.header_all("X-Debug") == [] and rec.header_all("X-Secret-In") == [], rec
    assert rec.header_all("X-Other") == ["keep"], rec
    assert r.header_all("X-Set-Me") == ["gateway"], r
    assert r.header_all("X-Served-By") == ["weft"], r
    assert r.header_all("X-Internal") == [], r
    assert r.header_all("X-Kept") == ["1"], r


def test_forwarded_headers_and_via(env):
    g, a, b = env
    r = send(g, "GET", "/exact", [("Host", "shop.example:8080"),
                                  ("X-Forwarded-For", "203.0.113.7"),
                                  ("X-Forwarded-Proto", "https"),
                                  ("X-Forwarded-Host", "spoofed.example")])
    assert r.status == 200
    rec = a.last()
    assert rec.header_all("X-Forwarded-For") == ["203.0.113.7, 127.0.0.1"], rec
    assert rec.header_all("X-Forwarded-Proto") == ["http"], rec
    assert rec.header_all("X-Forwarded-Host") == ["shop.example:8080"], rec
    assert rec.header_all("Via") == ["1.1 weft"], rec
    # without a client XFF the gateway starts the list
    send(g, "GET", "/exact")
    assert a.last().header_all("X-Forwarded-For") == ["127.0.0.1"]


def test_request_id_generated_and_propagated(env):
    g, a, b = env
    r = send(g, "GET", "/exact")
    rid = r.header("X-Request-Id")
    assert rid and re.fullmatch(r"[0-9a-f]{16}", rid), r
    assert a.last().header_all("X-Request-Id") == [rid]
    r2 = send(g, "GET", "/exact")
    assert r2.header("X-Request-Id") != rid
    r = send(g, "GET", "/exact", [("X-Request-Id", "client-id-42")])
    assert r.header_all("X-Request-Id") == ["client-id-42"], r
    assert a.last().header_all("X-Request-Id") == ["client-id-42"]


def test_hop_by_hop_headers_not_forwarded(env):
    g, a, b = env
    r = send(g, "GET", "/exact", [("Connection", "keep-alive, Foo"), ("Foo", "bar"),
                                  ("Keep-Alive", "timeout=5"), ("TE", "trailers"),
                                  ("Proxy-Connection", "keep-alive"), ("X-End", "ok")])
    assert r.status == 200
    rec = a.last()
    names = [k.lower() for k, _ in rec.headers]
    for h in ("foo", "keep-alive", "te", "proxy-connection"):
        assert h not in names, (h, rec)
    assert "foo" not in (rec.header("Connection") or "").lower(), rec
    assert rec.header("X-End") == "ok"


def test_deadline_header(env):
    g, a, b = env
    send(g, "GET", "/hx/deadline")
    v = a.last().header_all("X-Weft-Deadline-Ms")
    assert len(v) == 1 and v[0].isdigit(), a.last()
    assert 2000 <= int(v[0]) <= 3000, v  # route timeout 3s
    # default route timeout 15s; a client-sent deadline header is replaced
    send(g, "GET", "/exact", [("X-Weft-Deadline-Ms", "999999")])
    v = a.last().header_all("X-Weft-Deadline-Ms")
    assert len(v) == 1 and 14000 <= int(v[0]) <= 15000, v


def test_added_headers_can_be_disabled(gateway, origins):
    a, = origins(1)
    g = gateway(f"""
forwarded_headers: false
via: false
deadline_header: ""
clusters:
  a: {{endpoints: [{a.addr}]}}
routes:
  - cluster: a
""")
    r = send(g, "GET", "/plain", [("X-Forwarded-For", "203.0.113.7")])
    assert r.status == 200
    rec = a.last()
    # client headers pass untouched, nothing is added (X-Request-Id always is)
    assert rec.header_all("X-Forwarded-For") == ["203.0.113.7"], rec
    for h in ("X-Forwarded-Proto", "X-Forwarded-Host", "Via", "X-Weft-Deadline-Ms"):
        assert rec.header(h) is None, (h, rec)
    assert rec.header("X-Request-Id") == r.header("X-Request-Id")


def test_repeated_forwarding_headers_are_combined(env):
    """Two X-Forwarded-For / Via field lines are one list (RFC 9110 5.3):
    the gateway appends to the whole list, it does not drop a line."""
    g, a, b = env
    r = send(g, "GET", "/exact", [("X-Forwarded-For", "10.0.0.1"),
                                  ("X-Forwarded-For", "10.0.0.2"),
                                  ("Via", "1.0 edge-a"), ("Via", "1.1 edge-b")])
    assert r.status == 200
    rec = a.last()
    xff = ", ".join(rec.header_all("X-Forwarded-For"))
    assert xff == "10.0.0.1, 10.0.0.2, 127.0.0.1", rec
    via = ", ".join(rec.header_all("Via"))
    assert via == "1.0 edge-a, 1.1 edge-b, 1.1 weft", rec


def test_hop_by_hop_response_headers_not_forwarded(gateway, origins):
    o, = origins(1)
    o.extra_headers = [("Connection", "X-Hop"), ("X-Hop", "secret"),
                       ("Keep-Alive", "timeout=5"), ("X-End", "ok")]
    g = gateway(f"""
clusters:
  a: {{endpoints: [{o.addr}]}}
routes:
  - cluster: a
""")
    with g.client() as c:
        r = c.get("/resp-hop")
        assert r.status == 200, r
        names = [k.lower() for k, _ in r.headers]
        assert "x-hop" not in names and "keep-alive" not in names, r
        assert r.header("X-End") == "ok"
        assert c.get("/again").status == 200


@pytest.mark.parametrize("forwarded", ["X-Forwarded-For", "Via"])
def test_head_that_outgrows_the_forward_buffer_is_431_not_truncated(gateway, origins, forwarded):
    """The forwarded head is built in a 256 KiB per-worker buffer. With a
    large http.max_header_bytes, a head that fills it up to just before the
    appended X-Forwarded-For / Via value must be refused (431), never sent
    cut off mid-line: the client's Content-Length would then be glued onto
    that line, the upstream would see no length, and the body would be
    read as a second, smuggled request."""
    from gwutil import Client
    o, = origins(1)
    g = gateway(f"""
http: {{max_header_bytes: 512KiB}}
clusters:
  a: {{endpoints: [{o.addr}]}}
routes:
  - cluster: a
""")
    limit = 256 * 1024
    prefix = len(f"{forwarded}: ")
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    # forwarded bytes before the gateway's own lines: Host, the padding and
    # (for Via) the X-Forwarded-For line, which is appended first
    host = len("Host: 127.0.0.1\r\n")
    xff_line = len("X-Forwarded-For: 127.0.0.1\r\n") if forwarded == "Via" else 0
    if forwarded == "Via":
        xff_line += len("X-Forwarded-Proto: http\r\n") + len("X-Forwarded-Host: 127.0.0.1\r\n")
    # sweep the window where "<name>: " still fits and the value does not
    statuses = []
    for used in range(limit - prefix - 24, limit - prefix + 1, 2):
        pad_total = used - host - xff_line
        hs = [("Host", "127.0.0.1")]
        n = 0
        while pad_total > 0:
            name = f"X-Pad-{n:02d}"
            line = len(name) + 2 + 2
            v = min(8000, pad_total - line)
            if v < 1:  # cannot express the remainder: widen the previous one
                k, pv = hs[-1]
                hs[-1] = (k, pv + "p" * (pad_total))
                break
            hs.append((name, "p" * v))
            pad_total -= line + v
            n += 1
        hs.append((forwarded, "1.2.3.4" if forwarded == "X-Forwarded-For" else "1.1 edge"))
        with Client(g.port, timeout=5) as c:
            r = c.request("POST", "/form", headers=hs, body=smuggled)
            assert r.status in (200, 431), r
            statuses.append(r.status)
    assert 431 in statuses, "the sweep missed the buffer's end"
    assert o.count(path="/smuggled") == 0, "the body was read as a request"
    assert all(x.body == smuggled for x in o.recs()), o.recs()[:1]


def test_paths_are_normalized_before_routing_and_forwarding(gateway, origins):
    """Routing (and so per-route auth) sees the path the origin will:
    dot segments, escaped unreserved characters and repeated slashes cannot
    walk a request past the /admin/ route into the catch-all, and the
    normal form is what goes upstream."""
    o, = origins(1)
    g = gateway(f"""
clusters:
  c:
    endpoints: [{o.addr}]
routes:
  - name: admin
    match: {{prefix: /admin/}}
    direct: {{status: 403, body: "admin is closed"}}
  - name: all
    match: {{prefix: /}}
    cluster: c
""")
    for target in ("/admin/x", "/public/../admin/x", "/%61dmin/x", "//admin/x",
                   "/public/%2e%2e/admin/x", "/./admin/x", "/admin/./x", "/../admin/x"):
        r = g.get(target)
        assert r.status == 403 and r.body == b"admin is closed", (target, r)
    assert o.count() == 0
    r = g.get("/a/./b/../c//d?x=/../y")
    assert r.status == 200, r
    assert o.last().target == "/a/c/d?x=/../y"  # the query is not a path
    r = g.get("/files/a%2Fb")  # an escaped slash is data, not a separator
    assert r.status == 200 and o.last().target == "/files/a%2Fb", r
