"""weft gateway: --check validation (FILE:LINE:COL: KEY: reason, exit 2) and
configuration reload (POST /admin/reload, SIGHUP, under load)."""
import os
import re
import signal
import subprocess
import threading
import time

import pytest

import weftutil
from gwutil import (REPO, Gateway, eps_yaml, gateway, nginx_origin, origins,  # noqa: F401
                    stop_all, wait_until)


def check(path):
    return weftutil.run_weft("gateway", "--check", "-c", str(path))


def test_check_valid_example():
    p = REPO / "examples" / "gateway.yaml"
    r = check(p)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.fullmatch(rf"{re.escape(str(p))}: ok \(\d+ routes, \d+ clusters\)",
                        r.stdout.strip()), r.stdout


INVALID = {
    # name: (yaml, line, col, key, reason regex)
    "unknown_key_in_cluster": ("""\
clusters:
  api:
    endpoints: [127.0.0.1:9001]
    lb: round_robin
    retries: 3
routes:
  - cluster: api
""", 5, 5, "clusters.api.retries", r"unknown key"),
    "unknown_cluster_in_route": ("""\
clusters:
  api:
    endpoints: [127.0.0.1:9001]
routes:
  - name: a
    match: {prefix: /a}
    cluster: api
  - name: b
    match: {prefix: /b}
    cluster: nosuch
""", 10, 14, "routes[1].cluster", r"no cluster named 'nosuch'"),
    "bad_regex": ("""\
clusters:
  api:
    endpoints: [127.0.0.1:9001]
routes:
  - name: bad-re
    match:
      regex: "^/items/([0-9]+$"
    cluster: api
""", 7, 14, "routes[0].match.regex", r"bad regex at offset 16: .*"),
    "bad_endpoint": ("""\
clusters:
  api:
    endpoints:
      - 127.0.0.1:9001
      - 127.0.0.1:99999
routes:
  - cluster: api
""", 5, 9, "clusters.api.endpoints[1]",
        re.escape("bad endpoint '127.0.0.1:99999' (want host:port with port 1-65535)")),
    "two_actions": ("""\
clusters:
  api:
    endpoints: [127.0.0.1:9001]
routes:
  - name: two
    match: {path: /x}
    cluster: api
    direct: {status: 200, body: "hi"}
""", 5, 5, "routes[0]",
        re.escape("a route needs exactly one of: cluster, split, redirect, direct") +
        r"(, \w+)*"),
}


@pytest.mark.parametrize("name", sorted(INVALID))
def test_check_invalid(tmp_path, name):
    text, line, col, key, reason = INVALID[name]
    p = tmp_path / f"{name}.yaml"
    p.write_text(text)
    r = check(p)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    want = re.compile(rf"^(weft gateway: )?{re.escape(f'{p}:{line}:{col}: {key}: ')}{reason}$")
    lines = r.stderr.strip().splitlines()
    assert any(want.match(ln) for ln in lines), (want.pattern, r.stderr)
    assert "ok (" not in r.stdout


# ---------------------------------------------------------------- reload

def base_config(o):
    return f"""
clusters:
  c:
    endpoints: {eps_yaml(o)}
    lb: round_robin
routes:
  - name: old
    match: {{prefix: /old}}
    cluster: c
"""


def test_admin_reload_adds_route(gateway, origins):
    o = origins(1)
    g = gateway(base_config(o))
    assert g.get("/old/x").status == 200
    assert g.get("/new/x").status == 404
    g.write_config(base_config(o) + """
  - name: new
    match: {prefix: /new}
    direct: {status: 200, body: "brand new"}
""")
    r = g.reload()
    assert r.status == 200, r
    assert r.json() == {"status": "reloaded"}
    # the admin answer comes after the file was validated; workers install the
    # new generation through their post queue: bounded wait
    wait_until(lambda: g.get("/new/x").status == 200, 3, what="new route served")
    r = g.get("/new/x")
    assert r.body == b"brand new"
    assert g.get("/old/x").status == 200
    cfg = g.admin_get("/admin/config").json()
    assert cfg["reloads"] == 1 and cfg["routes"] == 2 and cfg["clusters"] == 1, cfg
    assert "brand new" in cfg["yaml"]


def test_admin_reload_invalid_keeps_old_config(gateway, origins):
    o = origins(1)
    g = gateway(base_config(o))
    g.write_config(base_config(o) + """
  - name: broken
    match: {prefix: /new}
    cluster: missing-cluster
""")
    r = g.reload()
    assert r.status == 400, r
    body = r.json()
    assert body["status"] == "rejected"
    # line 1 is empty; the appended route's cluster key is on line 13
    assert body["error"] == (f"{g.config_path}:13:14: routes[1].cluster: "
                             "no cluster named 'missing-cluster'"), body
    assert g.get("/old/x").status == 200
    assert g.get("/new/x").status == 404
    cfg = g.admin_get("/admin/config").json()
    assert cfg["reloads"] == 0 and cfg["reload_failures"] == 1, cfg
    # the text of the config that serves, not the rejected edit in the file
    assert cfg["yaml"] == base_config(o), cfg["yaml"]
    # an unknown key is rejected at reload exactly as at start-up
    g.write_config(base_config(o).replace("lb: round_robin", "lb: round_robin\n    colour: red"))
    r = g.reload()
    assert r.status == 400, r
    assert r.json()["error"] == f"{g.config_path}:6:5: clusters.c.colour: unknown key", r.body
    assert g.get("/old/x").status == 200


def test_reload_validates_the_common_keys_like_start_up(gateway, origins):
    """listen, workers, log and http.* cannot change without a restart, but a
    reload still checks them: a file that reload accepted must also start
    (was: their keys were only marked as read, so a typo under http: or a
    bad value was accepted and the next restart failed)."""
    o = origins(1)
    g = gateway(base_config(o))
    for extra, err in [
        ("http:\n  max_bdy: 1KiB\n", "2:3: http.max_bdy: unknown key"),
        ("log: {level: loud}\n", "1:14: log.level: expected one of: debug, info, warn, error, off"),
        ("workers: -3\n", "1:10: workers: expected an integer between 0 and 256"),
        ("http: {body_timeout: 0ms}\n",
         "1:22: http.body_timeout: expected a duration between 1ms and 24h"),
    ]:
        g.write_config(extra + base_config(o))
        r = g.reload()
        assert r.status == 400, (extra, r)
        assert r.json()["error"] == f"{g.config_path}:{err}", r.body
        assert g.get("/old/x").status == 200
    # valid common keys are accepted (and ignored until a restart)
    g.write_config("http: {max_body: 2MiB}\nlog: {level: info}\n" + base_config(o))
    assert g.reload().status == 200
    assert g.admin_get("/admin/config").json()["reload_failures"] == 4


def test_rejected_reload_with_a_non_utf8_config_path(tmp_path, origins):
    """The reason quotes the file name; one that is not UTF-8 goes into the
    JSON answers with U+FFFD for the bytes that are not (was: a crash)."""
    o = origins(1)
    workdir = os.fsdecode(os.fsencode(str(tmp_path)) + b"/caf\xe9")
    os.mkdir(workdir)
    g = Gateway(base_config(o), workdir)
    try:
        assert g.get("/old/x").status == 200
        g.write_config(base_config(o).replace("lb: round_robin", "lb: round_robin\n    colour: red"))
        r = g.reload()
        assert r.status == 400, r
        body = r.json()  # valid JSON: the stray byte is U+FFFD
        shown = str(tmp_path) + "/caf\ufffd/" + g.config_path.name
        assert body == {"status": "rejected",
                        "error": f"{shown}:6:5: clusters.c.colour: unknown key"}, body
        assert g.get("/old/x").status == 200
        cfg = g.admin_get("/admin/config").json()
        assert cfg["file"] == shown and cfg["yaml"] == base_config(o), cfg
    finally:
        stop_all([g])


def test_sighup_reload(gateway, origins):
    o = origins(1)
    g = gateway(base_config(o))
    g.write_config(base_config(o).replace("prefix: /old", "prefix: /renamed"))
    g.send_signal(signal.SIGHUP)
    wait_until(lambda: g.get("/renamed/x").status == 200, 5, what="route after SIGHUP")
    assert g.get("/old/x").status == 404
    assert g.admin_get("/admin/config").json()["reloads"] == 1
    assert "config reloaded" in g.stderr


WRK_SOCKET_ERR = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
WRK_TOTAL = re.compile(r"(\d+) requests in ")


def test_reload_under_load_drops_nothing(gateway, nginx_origin):
    ngx = nginx_origin()
    cfg_a = f"""
clusters:
  web:
    endpoints: [{ngx.addr}]
    lb: round_robin
routes:
  - name: all
    cluster: web
"""
    cfg_b = f"""
clusters:
  web:
    endpoints: [{ngx.addr}]
    lb: least_request
    circuit_breaker: {{min_requests: 50}}
routes:
  - name: direct
    match: {{path: /never-requested}}
    direct: {{status: 200, body: "x"}}
  - name: all
    cluster: web
    timeout: 5s
"""
    g = gateway(cfg_a, workers=2)
    assert g.get("/").body == b"nginx-ok\n"
    wrk = subprocess.Popen(["wrk", "-t1", "-c16", "-d5s", "--timeout", "4s",
                            f"http://127.0.0.1:{g.port}/"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    results = []
    try:
        time.sleep(0.5)
        for i in range(5):
            g.write_config(cfg_b if i % 2 == 0 else cfg_a)
            results.append(g.reload())
            time.sleep(0.7)
        out, _ = wrk.communicate(timeout=30)
    finally:
        if wrk.poll() is None:
            wrk.kill()
            wrk.wait(timeout=10)
    assert [r.status for r in results] == [200] * 5, results
    assert wrk.returncode == 0, out
    total = WRK_TOTAL.search(out)
    assert total and int(total.group(1)) > 1000, out
    m = WRK_SOCKET_ERR.search(out)
    assert m is None or all(int(x) == 0 for x in m.groups()), out
    m = WRK_NON2XX.search(out)
    assert m is None or int(m.group(1)) == 0, out
    assert g.admin_get("/admin/config").json()["reloads"] == 5


def test_inflight_request_finishes_on_old_config(gateway, origins):
    slow, other = origins(2)
    slow.set_mode("sleep", delay_ms=600)
    g = gateway(base_config([slow]))
    result = {}

    def run():
        try:
            result["r"] = g.get("/old/inflight", timeout=10)
        except Exception as e:  # reported below
            result["e"] = e

    t = threading.Thread(target=run)
    t.start()
    wait_until(lambda: slow.count() == 1, 2, what="request reached the slow origin")
    # new config: the route now points elsewhere
    g.write_config(base_config([other]))
    assert g.reload().status == 200
    t.join(timeout=10)
    assert "e" not in result, result
    r = result["r"]
    assert r.status == 200 and r.header("X-Origin") == slow.name, r
    slow.set_mode("ok")
    wait_until(lambda: g.get("/old/new").header("X-Origin") == other.name, 3,
               what="new requests use the new config")


def test_repeated_reloads_with_active_health_checks(gateway, origins):
    os_ = origins(3)
    os_[2].health_status = 503

    def conf(i):
        return f"""
clusters:
  c:
    endpoints: {eps_yaml(os_)}
    lb: {"round_robin" if i % 2 else "least_request"}
    health_check: {{path: /health, interval: 20ms, timeout: 50ms, healthy_threshold: 1,
                    unhealthy_threshold: 1}}
  t:
    endpoints: {eps_yaml(os_[:2])}
    health_check: {{tcp: true, interval: 20ms, timeout: 50ms}}
routes:
  - name: r{i}
    match: {{prefix: /t}}
    cluster: t
  - name: all
    cluster: c
"""
    g = gateway(conf(0))
    with g.client() as c:
        for i in range(1, 11):
            g.write_config(conf(i))
            assert g.reload().status == 200
            for _ in range(5):
                assert c.get("/x").status == 200
                assert c.get("/t").status == 200
            time.sleep(0.03)
    assert g.admin_get("/admin/config").json()["reloads"] == 10
    wait_until(lambda: not g.endpoint("c", os_[2].addr)["healthy"], 2,
               what="health state after the last reload")


def test_sigterm_drains_inflight_proxied_request(gateway, origins):
    slow, = origins(1)
    slow.set_mode("sleep", delay_ms=700)
    g = gateway(base_config([slow]))
    result = {}

    def run():
        try:
            result["r"] = g.get("/old/drain", timeout=10)
        except Exception as e:
            result["e"] = e

    t = threading.Thread(target=run)
    t.start()
    wait_until(lambda: slow.count() == 1, 2, what="request reached the slow origin")
    g.send_signal(signal.SIGTERM)
    wait_until(lambda: "draining" in g.stderr, 2, what="drain to start")
    t.join(timeout=10)
    assert "e" not in result, result
    assert result["r"].status == 200 and result["r"].header("X-Origin") == slow.name
    assert g.stop() == 0


def check_error(tmp_path, name, text, line, col, key, reason):
    p = tmp_path / f"{name}.yaml"
    p.write_text(text)
    r = check(p)
    assert r.returncode == 2, (name, r.returncode, r.stdout, r.stderr)
    assert r.stderr == f"weft gateway: {p}:{line}:{col}: {key}: {reason}\n", (name, r.stderr)


CLUSTER = "clusters:\n  api:\n    endpoints: [127.0.0.1:9001]\n"


def test_check_redirect_status_must_redirect(tmp_path):
    # 304 Not Modified, 305 and 306 are in 301..308 but do not redirect
    for st in (304, 305, 306):
        check_error(tmp_path, f"r{st}",
                    CLUSTER + f"routes:\n  - redirect: {{location: /x, status: {st}}}\n",
                    5, 38, "routes[0].redirect.status",
                    "expected a redirect status: 301, 302, 303, 307 or 308")
    for st in (301, 302, 303, 307, 308):
        p = tmp_path / f"ok{st}.yaml"
        p.write_text(CLUSTER + f"routes:\n  - redirect: {{location: /x, status: {st}}}\n")
        r = check(p)
        assert r.returncode == 0, (st, r.stderr)


def test_check_deadline_header_is_a_header_name(tmp_path):
    # the name goes into every upstream request: a space would make them
    # malformed, and a name too long for the proxy was silently not sent
    reason = 'expected a header name of at most 64 characters, or "" for none'
    routes = "routes:\n  - cluster: api\n"
    check_error(tmp_path, "space", CLUSTER + 'deadline_header: "X Deadline"\n' + routes,
                4, 18, "deadline_header", reason)
    check_error(tmp_path, "long", CLUSTER + "deadline_header: X-" + "a" * 70 + "\n" + routes,
                4, 18, "deadline_header", reason)
    for ok in ('""', "X-" + "a" * 62, "X-Deadline"):
        p = tmp_path / "ok.yaml"
        p.write_text(CLUSTER + f"deadline_header: {ok}\n" + routes)
        r = check(p)
        assert r.returncode == 0, (ok, r.stderr)


def test_check_split_weights_do_not_wrap(tmp_path):
    # the total is 32 bits: 4295 weights of 1000000 wrapped to 32705, and
    # then the first split took all the traffic
    items = "".join("      - {cluster: api, weight: 1000000}\n" for _ in range(4295))
    check_error(tmp_path, "wrap", CLUSTER + "routes:\n  - split:\n" + items,
                4300, 9, "routes[0].split[4294]",
                "the weights add up to more than 4294967295")


def check_ok(tmp_path, text):
    p = tmp_path / "ok.yaml"
    p.write_text(text)
    r = check(p)
    assert r.returncode == 0, (text, r.stderr)


def test_check_adaptive_limits_are_ordered(tmp_path):
    # the limiter raised max_limit to min_limit and clamped initial_limit
    # into the range without a word
    ac = CLUSTER + "    adaptive_concurrency:\n"
    routes = "routes:\n  - cluster: api\n"
    check_error(tmp_path, "minmax", ac + "      min_limit: 50\n      max_limit: 10\n" + routes,
                5, 18, "clusters.api.adaptive_concurrency.min_limit",
                "min_limit (50) is greater than max_limit (10)")
    # only max_limit given: below the default min_limit (5)
    check_error(tmp_path, "maxonly", ac + "      max_limit: 3\n" + routes,
                5, 18, "clusters.api.adaptive_concurrency.max_limit",
                "min_limit (5) is greater than max_limit (3)")
    check_error(tmp_path, "initial",
                ac + "      initial_limit: 200\n      max_limit: 100\n" + routes,
                5, 22, "clusters.api.adaptive_concurrency.initial_limit",
                "must be between min_limit (5) and max_limit (100)")
    check_ok(tmp_path, ac + "      min_limit: 10\n      max_limit: 10\n" + routes)
    check_ok(tmp_path, ac + "      initial_limit: 10\n      max_limit: 10\n" + routes)


def test_check_retry_backoff_base_not_above_max(tmp_path):
    # every delay is capped at max: a larger base silently meant max
    rt = CLUSTER + "routes:\n  - cluster: api\n    retry:\n      backoff: "
    check_error(tmp_path, "both", rt + "{base: 2s, max: 1s}\n", 7, 23,
                "routes[0].retry.backoff.base", "base (2000ms) is greater than max (1000ms)")
    # only base given: the default max is 250ms
    check_error(tmp_path, "base", rt + "{base: 1s}\n", 7, 23,
                "routes[0].retry.backoff.base", "base (1000ms) is greater than max (250ms)")
    check_ok(tmp_path, rt + "{base: 1s, max: 1s}\n")
    check_ok(tmp_path, rt + "{max: 5s}\n")


def test_check_hash_key_choose_one(tmp_path):
    # header silently won over source_ip, and a cookie next to a header was
    # reported as an unknown key
    reason = "choose one of: source_ip: true, header: NAME, cookie: NAME (not several)"
    routes = "routes:\n  - cluster: api\n"
    for name, keys in (("hs", "{header: X-User, source_ip: true}"),
                       ("hc", "{header: X-User, cookie: sid}"),
                       ("sc", "{source_ip: true, cookie: sid}")):
        check_error(tmp_path, name, CLUSTER + f"    lb: ring_hash\n    hash: {keys}\n" + routes,
                    5, 11, "clusters.api.hash", reason)
    for keys in ("{header: X-User}", "{cookie: sid}", "{source_ip: true}",
                 "{header: X-User, source_ip: false}"):
        check_ok(tmp_path, CLUSTER + f"    lb: ring_hash\n    hash: {keys}\n" + routes)


def test_check_retry_statuses_are_plain_integers(tmp_path):
    # strtol took a leading space or sign: " 500" and +500 were 500
    rt = CLUSTER + "routes:\n  - cluster: api\n    retry:\n      statuses: [502, "
    for bad in ('" 500"', "+500", '"500abc"', "0500", "5e2", "500.0", "99", "600", '""'):
        check_error(tmp_path, "bad", rt + bad + "]\n", 7, 23,
                    "routes[0].retry.statuses[1]", "expected a status code 100-599")
    check_error(tmp_path, "null", rt + "~]\n", 7, 23,
                "routes[0].retry.statuses[1]", "expected a string")
    for ok in ("100", "599", '"503"'):
        check_ok(tmp_path, rt + ok + "]\n")


JWKS = REPO / "tests" / "unit" / "data" / "auth" / "jwks.json"


def test_check_null_list_items_are_errors(tmp_path):
    # `- ~` was the header name "~" (a valid token) and `- null` the
    # audience "null"; every list of names now refuses nulls at the item
    route = CLUSTER + "routes:\n  - cluster: api\n"
    for item in ("~", "null", ""):
        check_error(tmp_path, "rm", route + f"    request_headers:\n      remove:\n"
                    f"        - X-Debug\n        - {item}\n",
                    9, 10 if item == "" else 11, "routes[0].request_headers.remove[1]",
                    "expected a string")
        check_error(tmp_path, "aud", route + f"    auth:\n      jwt:\n        jwks: {JWKS}\n"
                    f"        audiences:\n          - api\n          - {item}\n",
                    11, 12 if item == "" else 13, "routes[0].auth.jwt.audiences[1]",
                    "expected a string")
    lists = {"request_headers.remove": "    request_headers:\n      remove: [X-A, {}]\n",
             "response_headers.remove": "    response_headers:\n      remove: [X-A, {}]\n",
             "match.methods": "    match:\n      methods: [GET, {}]\n",
             "retry.on": "    retry:\n      on: [5xx, {}]\n",
             "auth.jwt.algorithms":
                 f"    auth:\n      jwt:\n        jwks: {JWKS}\n        algorithms: [RS256, {{}}]\n"}
    for key, text in lists.items():
        line = 5 + len(text.splitlines())
        col = text.splitlines()[-1].index("{}") + 1
        check_error(tmp_path, "seq", route + text.replace("{}", "null"), line, col,
                    f"routes[0].{key}[1]", "expected a string")
        check_error(tmp_path, "seq", route + text.replace("{}", "[x]"), line, col,
                    f"routes[0].{key}[1]", "expected a string")
    # empty string: not a name
    check_error(tmp_path, "emptyaud", route + f"    auth:\n      jwt:\n        jwks: {JWKS}\n"
                '        audiences: [api, ""]\n', 9, 26, "routes[0].auth.jwt.audiences[1]",
                "expected a non-empty string")
    # a null claim mapping value was the header name or required value "~"
    for m in ("forward_claims", "require_claims"):
        check_error(tmp_path, m, route + f"    auth:\n      jwt:\n        jwks: {JWKS}\n"
                    f"        {m}: {{sub: ~}}\n", 9, len(m) + 17,
                    f"routes[0].auth.jwt.{m}.sub", "expected a string")
    # quoted, they are strings
    check_ok(tmp_path, route + f"    auth:\n      jwt:\n        jwks: {JWKS}\n"
             '        audiences: [api, "null"]\n        require_claims: {sub: "~"}\n')
