"""`make demo` keeps working: scripts/demo.sh starts the whole system
(registry, catalog and pricing twice each, hello twice, gateway), its
first live requests succeed through the gateway, and Ctrl-C stops it all."""
import json
import os
import re
import signal
import subprocess
import time

from svcutil import REPO, WEFT_BIN, http, wait_until


def test_demo_runs_and_stops_cleanly(tmp_path):
    port = 23080
    out = tmp_path / "demo.out"
    with open(out, "wb") as f:
        p = subprocess.Popen(["bash", str(REPO / "scripts" / "demo.sh"), WEFT_BIN],
                             stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                             env={**os.environ, "DEMO_PORT": str(port)})
    try:
        # the live "$ curl .../both" line comes last ("/both" alone also matches
        # the help text printed before the first request)
        wait_until(lambda: re.search(r"\$ curl \S+/both\n", out.read_text())
                   and out.read_text().rstrip().endswith("}"),
                   timeout=60, interval=0.2, what="the demo's first requests")
        text = out.read_text()
        m = re.search(r"curl \S+/catalog/items/apple\n\s+(\{.*\})", text)
        assert m, text
        d = json.loads(m.group(1))
        assert d["price"]["currency"] == "EUR" and d["price"]["request_id"], d
        # the event log's produce/consume round trip
        assert re.search(r"offset 0: created \d\d:\d\d:\d\d\n\s+offset 1: shipped", text), text
        st, _, b = http(port, "GET", "/catalog/items")
        assert st == 200 and len(json.loads(b)["items"]) == 4
        st, _, b = http(port + 20, "GET", "/v1/services")
        svcs = json.loads(b)["services"]
        assert svcs["catalog"]["healthy"] == 2 and svcs["pricing"]["healthy"] == 2
    finally:
        os.killpg(p.pid, signal.SIGINT)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
            raise
    # nothing is left listening
    time.sleep(0.2)
    for off in (0, 1, 20, 31, 32, 41, 42, 50):
        try:
            http(port + off, "GET", "/health", timeout=1)
            raise AssertionError(f"port {port + off} still served after Ctrl-C")
        except OSError:
            pass
