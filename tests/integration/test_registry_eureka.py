"""weft registry: the Eureka-compatible API (src/registry/eureka.c, routed
from api.c under /eureka/v2/ and /eureka/) driven through the real binary
with real clients: requests, dig, xml.etree, and Debian's Prometheus server
with eureka_sd_configs.

Covered: register (JSON and XML InstanceInfo) / heartbeat / deregister
round trips on both base paths, 404 on an unknown heartbeat and the client's
re-registration, status overrides, JSON vs XML by the Accept header (XML by
default, as Eureka and as Prometheus reads it), apps__hashcode, delta, VIPs,
TTL expiry of an Eureka lease, cross-visibility with the native, Consul and
DNS interfaces, durability of Eureka registrations, bad input (400 with a
message, server unharmed) and a real Prometheus discovering and scraping two
instances through the Eureka API.

Every wait is bounded: sockets carry timeouts, subprocesses have timeouts,
polls have deadlines.
"""
import json
import subprocess
import time
import urllib.parse
import xml.etree.ElementTree as ET

import requests

from test_registry_api import registry  # noqa: F401  (fixture)
from test_registry_checks import Backend
from test_registry_dns import free_udp_tcp_port
from test_registry_durability import Registry as DurableRegistry
from weftutil import Prometheus

HTTP_TIMEOUT = 5.0
JSON_H = {"Accept": "application/json"}


# ------------------------------------------------------------------ helpers

def instance(app, iid, port, host="127.0.0.1", ip=None, status="UP", duration=None,
             metadata=None, **extra):
    """An InstanceInfo as the Netflix/Spring clients send it."""
    i = {"instanceId": iid, "hostName": host, "app": app.upper(), "ipAddr": ip or host,
         "status": status, "overriddenStatus": "UNKNOWN",
         "port": {"$": port, "@enabled": "true"}, "securePort": {"$": 443, "@enabled": "false"},
         "countryId": 1,
         "dataCenterInfo": {"@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo",
                            "name": "MyOwn"},
         "leaseInfo": {"renewalIntervalInSecs": 30, "durationInSecs": duration or 90},
         "metadata": metadata if metadata is not None
         else {"@class": "java.util.Collections$EmptyMap"},
         "homePageUrl": f"http://{host}:{port}/", "vipAddress": app.lower(),
         "secureVipAddress": app.lower(), "isCoordinatingDiscoveryServer": "false",
         "lastUpdatedTimestamp": "1700000000000", "lastDirtyTimestamp": "1700000000000"}
    if duration is None:
        del i["leaseInfo"]
    i.update(extra)
    return {"instance": i}


def call(reg, method, path, body=None, raw=None, headers=None, base="/eureka/v2"):
    h = dict(headers or {})
    data = raw
    if body is not None:
        data = json.dumps(body)
        h.setdefault("Content-Type", "application/json")
    return requests.request(method, reg.url + base + path, data=data, headers=h,
                            timeout=HTTP_TIMEOUT)


def register(reg, app, iid, port, base="/eureka/v2", **kw):
    r = call(reg, "POST", f"/apps/{app.upper()}", instance(app, iid, port, **kw), base=base)
    assert r.status_code == 204, (r.status_code, r.text)
    assert r.content == b""
    return r


def apps_json(reg, base="/eureka/v2"):
    r = call(reg, "GET", "/apps", headers=JSON_H, base=base)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json", r.text
    return r.json()["applications"]


def by_id(apps):
    """{instanceId: instance} over every application of an /apps answer."""
    return {i["instanceId"]: i for a in apps["application"] for i in a["instance"]}


def native(reg, svc):
    r = requests.get(f"{reg.url}/v1/services/{svc}", timeout=HTTP_TIMEOUT)
    assert r.status_code == 200
    return {i["id"]: i for i in r.json()["instances"]}


def wait_for(pred, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def metrics_backend(name):
    """A backend whose /metrics is valid Prometheus text (with no
    Content-Type, Prometheus reads the text format)."""
    return Backend(f"# TYPE demo_up gauge\ndemo_up{{who=\"{name}\"}} 1\n".encode())


# ------------------------------------------------------------------ round trips

def test_register_get_heartbeat_deregister(registry):
    reg = registry()
    register(reg, "catalog", "c1", 8081, metadata={"team": "core", "management.port": "9001"})
    register(reg, "catalog", "c2", 8082, host="node2.example", ip="127.0.0.2")
    apps = apps_json(reg)
    assert apps["apps__hashcode"] == "UP_2_"
    assert [a["name"] for a in apps["application"]] == ["CATALOG"]
    insts = by_id(apps)
    c1, c2 = insts["c1"], insts["c2"]
    assert c1["app"] == "CATALOG" and c1["status"] == "UP" and c1["ipAddr"] == "127.0.0.1"
    assert c1["port"] == {"$": 8081, "@enabled": "true"}
    assert c1["securePort"]["@enabled"] == "false"
    assert c1["metadata"] == {"team": "core", "management.port": "9001"}
    assert c1["leaseInfo"]["durationInSecs"] == 90  # Eureka's default lease
    assert c1["vipAddress"] == "catalog" and c1["homePageUrl"] == "http://127.0.0.1:8081/"
    assert c1["dataCenterInfo"]["name"] == "MyOwn"
    # the host name is kept apart from the address the native model uses
    assert c2["hostName"] == "node2.example" and c2["ipAddr"] == "127.0.0.2"
    assert native(reg, "catalog")["c2"]["address"] == "127.0.0.2"

    # one application, one instance, by any case of the name; /instances by id
    r = call(reg, "GET", "/apps/catalog", headers=JSON_H)
    assert r.status_code == 200
    assert {i["instanceId"] for i in r.json()["application"]["instance"]} == {"c1", "c2"}
    r = call(reg, "GET", "/apps/Catalog/c1", headers=JSON_H)
    assert r.status_code == 200 and r.json()["instance"]["port"]["$"] == 8081
    r = call(reg, "GET", "/instances/c2", headers=JSON_H)
    assert r.status_code == 200 and r.json()["instance"]["hostName"] == "node2.example"
    for path in ("/apps/NOPE", "/apps/CATALOG/nope", "/instances/nope"):
        r = call(reg, "GET", path, headers=JSON_H)
        assert r.status_code == 404 and r.content == b"", path

    # heartbeat as the Netflix client sends it: 200 and an empty body
    r = call(reg, "PUT", "/apps/CATALOG/c1?status=UP&lastDirtyTimestamp=1700000000000")
    assert r.status_code == 200 and r.content == b""
    # deregister: 200, then gone (a second one and a heartbeat are 404)
    r = call(reg, "DELETE", "/apps/CATALOG/c1")
    assert r.status_code == 200 and r.content == b""
    assert set(native(reg, "catalog")) == {"c2"}
    assert call(reg, "DELETE", "/apps/CATALOG/c1").status_code == 404
    assert call(reg, "GET", "/apps/CATALOG/c1").status_code == 404
    assert apps_json(reg)["apps__hashcode"] == "UP_1_"


def test_unknown_heartbeat_is_404_and_the_client_registers_again(registry):
    """The Eureka client's cycle: a heartbeat for an instance the server
    does not know answers 404 (empty body), the client registers, and its
    heartbeats succeed again."""
    reg = registry()
    r = call(reg, "PUT", "/apps/BILLING/b1?status=UP")
    assert r.status_code == 404 and r.content == b""
    register(reg, "billing", "b1", 9000)
    assert call(reg, "PUT", "/apps/BILLING/b1?status=UP").status_code == 200
    # the application in the path must be the instance's
    assert call(reg, "PUT", "/apps/OTHER/b1").status_code == 404


def test_spring_base_path_and_xml_by_default(registry):
    """/eureka/ (Spring Cloud's base) is the same API; without an Accept
    header asking for JSON the answer is XML, as Eureka's."""
    reg = registry()
    register(reg, "web", "w1", 8080, base="/eureka",
             metadata={"zone": "a", "x&y": "1<2"})
    r = call(reg, "GET", "/apps", base="/eureka")
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/xml"
    root = ET.fromstring(r.content)
    assert root.tag == "applications"
    assert root.findtext("apps__hashcode") == "UP_1_"
    inst = root.find("application/instance")
    assert root.findtext("application/name") == "WEB"
    assert inst.findtext("instanceId") == "w1" and inst.findtext("hostName") == "127.0.0.1"
    port = inst.find("port")
    assert port.text == "8080" and port.get("enabled") == "true"
    assert inst.find("dataCenterInfo").get("class").endswith("DefaultDataCenterInfo")
    # an XML name is kept; a key that cannot be an element is left out of XML only
    assert inst.findtext("metadata/zone") == "a"
    assert len(inst.find("metadata")) == 1
    assert apps_json(reg, base="/eureka")["application"][0]["instance"][0]["metadata"] == \
        {"zone": "a", "x&y": "1<2"}
    # Accept: application/xml is XML too; delta answers the whole registry
    r = call(reg, "GET", "/apps/delta", headers={"Accept": "application/xml"})
    assert ET.fromstring(r.content).findtext("apps__hashcode") == "UP_1_"
    d = call(reg, "GET", "/apps/delta", headers=JSON_H).json()["applications"]
    assert set(by_id(d)) == {"w1"}
    # single instance in XML
    r = call(reg, "GET", "/apps/WEB/w1")
    assert ET.fromstring(r.content).tag == "instance"
    # VIP lookups
    assert call(reg, "GET", "/vips/web", headers=JSON_H).status_code == 200
    assert call(reg, "GET", "/svips/web").status_code == 200
    assert call(reg, "GET", "/vips/none").status_code == 404


def test_xml_registration(registry):
    """An InstanceInfo in XML (Eureka's XStream form) registers like JSON."""
    reg = registry()
    doc = """<?xml version="1.0" encoding="UTF-8"?>
<!-- as the XML encoders of Eureka clients write it -->
<instance>
  <instanceId>orders-1</instanceId>
  <hostName>orders.local</hostName>
  <app>ORDERS</app>
  <ipAddr>127.0.0.3</ipAddr>
  <status>STARTING</status>
  <overriddenstatus>UNKNOWN</overriddenstatus>
  <port enabled="true">7070</port>
  <securePort enabled="true">7443</securePort>
  <countryId>1</countryId>
  <dataCenterInfo class="com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo">
    <name>MyOwn</name>
  </dataCenterInfo>
  <leaseInfo><renewalIntervalInSecs>5</renewalIntervalInSecs>
    <durationInSecs>15</durationInSecs></leaseInfo>
  <metadata><owner>a &amp; b</owner><note><![CDATA[<raw>]]></note><e>&#x41;&#66;</e></metadata>
  <vipAddress>orders-vip</vipAddress>
</instance>"""
    r = call(reg, "POST", "/apps/ORDERS", raw=doc.encode(),
             headers={"Content-Type": "application/xml"})
    assert r.status_code == 204, r.text
    i = by_id(apps_json(reg))["orders-1"]
    assert i["status"] == "STARTING" and i["hostName"] == "orders.local"
    assert i["securePort"] == {"$": 7443, "@enabled": "true"}
    assert i["metadata"] == {"owner": "a & b", "note": "<raw>", "e": "AB"}
    assert i["vipAddress"] == "orders-vip" and i["leaseInfo"]["durationInSecs"] == 15
    n = native(reg, "orders")["orders-1"]
    assert n["ttl_ms"] == 15000 and n["status"] == "STARTING" and not n["healthy"]
    assert call(reg, "GET", "/vips/orders-vip", headers=JSON_H).status_code == 200
    # UNKNOWN (Eureka's "not yet known") is kept as STARTING: not serving
    body = instance("orders", "orders-2", 7071, status="UNKNOWN")
    assert call(reg, "POST", "/apps/ORDERS", body).status_code == 204
    assert native(reg, "orders")["orders-2"]["status"] == "STARTING"


def test_status_override(registry):
    reg = registry()
    register(reg, "pay", "p1", 8000)
    r = call(reg, "PUT", "/apps/PAY/p1/status?value=OUT_OF_SERVICE")
    assert r.status_code == 200 and r.content == b""
    i = by_id(apps_json(reg))["p1"]
    assert i["status"] == "OUT_OF_SERVICE" and i["overriddenStatus"] == "OUT_OF_SERVICE"
    assert apps_json(reg)["apps__hashcode"] == "OUT_OF_SERVICE_1_"
    n = native(reg, "pay")["p1"]
    assert n["status"] == "OUT_OF_SERVICE" and not n["healthy"]
    # the client re-registering UP does not undo the operator's override
    register(reg, "pay", "p1", 8000)
    assert native(reg, "pay")["p1"]["status"] == "OUT_OF_SERVICE"
    # removing the override: UP again
    r = call(reg, "DELETE", "/apps/PAY/p1/status?value=UP")
    assert r.status_code == 200
    assert native(reg, "pay")["p1"]["status"] == "UP"
    assert call(reg, "PUT", "/apps/PAY/p1/status?value=DOWN").status_code == 200
    assert by_id(apps_json(reg))["p1"]["status"] == "DOWN"
    assert call(reg, "DELETE", "/apps/PAY/p1/status").status_code == 200
    assert native(reg, "pay")["p1"]["status"] == "UP"
    # bad values and unknown instances
    r = call(reg, "PUT", "/apps/PAY/p1/status?value=SLEEPY")
    assert r.status_code == 400 and "value: expected UP" in r.text
    assert call(reg, "PUT", "/apps/PAY/p1/status").status_code == 400
    assert call(reg, "PUT", "/apps/PAY/nope/status?value=UP").status_code == 404
    assert call(reg, "GET", "/apps/PAY/p1/status").status_code == 405


def test_ttl_expiry_of_an_eureka_lease(registry):
    """durationInSecs is the lease: heartbeats keep the instance, silence
    removes it after one duration (not Eureka's 2 x duration)."""
    reg = registry()
    register(reg, "lease", "l1", 8000, duration=1)
    register(reg, "lease", "l2", 8001)
    assert native(reg, "lease")["l1"]["ttl_ms"] == 1000
    assert native(reg, "lease")["l2"]["ttl_ms"] == 90000
    t_end = time.monotonic() + 2.0
    while time.monotonic() < t_end:  # heartbeats every 300 ms outlive the 1 s lease
        assert call(reg, "PUT", "/apps/LEASE/l1").status_code == 200
        time.sleep(0.3)
    assert "l1" in native(reg, "lease")
    t0 = time.monotonic()
    assert wait_for(lambda: "l1" not in native(reg, "lease"), 5.0)
    assert time.monotonic() - t0 < 2.0
    assert call(reg, "PUT", "/apps/LEASE/l1").status_code == 404
    assert set(by_id(apps_json(reg))) == {"l2"}


def test_cross_visibility_native_consul_dns(registry):
    dns = free_udp_tcp_port()
    reg = registry(extra_args=("--dns", f"127.0.0.1:{dns}"))
    # Eureka -> native, Consul, DNS
    register(reg, "inventory", "i1", 8500, ip="127.0.0.9", host="inv-host",
             metadata={"team": "stock"})
    n = native(reg, "inventory")["i1"]
    assert n["address"] == "127.0.0.9" and n["port"] == 8500 and n["healthy"]
    assert n["meta"]["team"] == "stock" and n["meta"]["eureka.hostName"] == "inv-host"
    r = requests.get(f"{reg.url}/v1/catalog/service/inventory", timeout=HTTP_TIMEOUT)
    assert [(e["ServiceID"], e["ServiceAddress"], e["ServicePort"]) for e in r.json()] == \
        [("i1", "127.0.0.9", 8500)]

    def dig_a():
        p = subprocess.run(["dig", "@127.0.0.1", "-p", str(dns), "+short", "+time=1",
                            "+tries=1", "inventory.service.weft"], capture_output=True,
                           text=True, timeout=10)
        return p.stdout.split()

    assert wait_for(lambda: dig_a() == ["127.0.0.9"], 5.0), dig_a()

    # native -> Eureka: upper-cased application, address as host name, the
    # HTTP check as healthCheckUrl, unhealthy as DOWN
    r = requests.put(f"{reg.url}/v1/services/Catalog/instances/n1",
                     json={"address": "127.0.0.1", "port": 9, "meta": {"a b": "x"},
                           "check": {"http": "/healthz", "interval": "60s",
                                     "status": "critical"}},
                     timeout=HTTP_TIMEOUT)
    assert r.status_code == 200
    r = requests.put(f"{reg.url}/v1/services/Catalog/instances/n2",
                     json={"address": "127.0.0.1", "port": 10, "status": "DOWN"},
                     timeout=HTTP_TIMEOUT)
    assert r.status_code == 200
    apps = apps_json(reg)
    assert [a["name"] for a in apps["application"]] == ["CATALOG", "INVENTORY"]
    n1 = by_id(apps)["n1"]
    assert n1["hostName"] == "127.0.0.1" and n1["status"] == "DOWN"
    assert n1["healthCheckUrl"] == "http://127.0.0.1:9/healthz"
    assert n1["leaseInfo"]["durationInSecs"] == 0  # no lease
    assert apps["apps__hashcode"] == "DOWN_2_UP_1_"
    # XML leaves out the meta key that cannot be an element name, and parses
    root = ET.fromstring(call(reg, "GET", "/apps").content)
    assert root.find("application/instance/metadata") is not None
    # an Eureka registration joins the existing service whatever the case
    register(reg, "CATALOG", "e1", 8088)
    assert set(native(reg, "Catalog")) == {"n1", "n2", "e1"}
    r = requests.get(f"{reg.url}/v1/services/catalog", timeout=HTTP_TIMEOUT)
    assert r.json()["instances"] == []
    # an Eureka heartbeat renews a native instance's lease too
    assert call(reg, "PUT", "/apps/catalog/n2").status_code == 200


def test_bad_input_is_400_and_harmless(registry):
    reg = registry()
    register(reg, "keep", "k1", 8000)
    good = instance("svc", "s1", 8000)["instance"]

    def with_(**kw):
        d = dict(good)
        for k, v in kw.items():
            if v is None:
                d.pop(k, None)
            else:
                d[k] = v
        return {"instance": d}

    cases = [
        (b"{", "invalid JSON"),
        (b"[]", "body: expected an InstanceInfo"),
        (json.dumps(good).encode(), "body: expected an InstanceInfo"),  # not wrapped
        (json.dumps(with_(hostName=None)).encode(), "instance.hostName: missing"),
        (json.dumps(with_(app=None)).encode(), "instance.app: missing"),
        (json.dumps(with_(app="OTHER")).encode(), "instance.app: OTHER does not match"),
        (json.dumps(with_(port=None)).encode(), "instance.port: missing"),
        (json.dumps(with_(port={"$": 0, "@enabled": "true"})).encode(), "instance.port:"),
        (json.dumps(with_(port={"$": 70000})).encode(), "instance.port:"),
        (json.dumps(with_(port={"$": "http"})).encode(), "instance.port:"),
        (json.dumps(with_(securePort={"$": -1})).encode(), "instance.securePort:"),
        (json.dumps(with_(status="SLEEPING")).encode(), "instance.status: expected UP"),
        (json.dumps(with_(instanceId="a b")).encode(), "instance.instanceId:"),
        (json.dumps(with_(hostName={"x": 1})).encode(), "instance.hostName: expected a string"),
        (json.dumps(with_(metadata={"k": {"n": 1}})).encode(), "instance.metadata.k:"),
        (json.dumps(with_(metadata=[1])).encode(), "instance.metadata: expected an object"),
        (json.dumps(with_(leaseInfo={"durationInSecs": 100000})).encode(),
         "instance.leaseInfo.durationInSecs"),
        (json.dumps(with_(ipAddr="1.2.3.4/8")).encode(), "address: invalid character"),
        (b"<instance><hostName>h</hostName>", "invalid XML: unterminated element"),
        (b"<instance><a></b></instance>", "invalid XML: mismatched end tag"),
        (b'<!DOCTYPE x [<!ENTITY a "aaaa">]><instance/>', "invalid XML: DTDs are not supported"),
        (b"<instance>&bogus;</instance>", "invalid XML: unknown entity"),
        (b"<instance>&#0;</instance>", "invalid XML: bad character reference"),
        (b"<instance a='1' a='2'/>", "invalid XML: duplicate attribute"),
        (b"<instance/><x/>", "invalid XML: content after the root element"),
        (b"<instance>\xff\xfe</instance>", "invalid XML: text is not UTF-8"),
        (b"<instance>\x00</instance>", "invalid XML: NUL byte"),
        (b"<a>" * 40 + b"</a>" * 40, "invalid XML: nested too deeply"),
        (b"<instance><port>x</port></instance>", "instance.hostName: missing"),
    ]
    for raw, msg in cases:
        r = call(reg, "POST", "/apps/SVC", raw=raw)
        assert r.status_code == 400, (raw, r.status_code, r.text)
        assert r.text.startswith(msg), (raw, r.text)
        assert r.headers["Content-Type"].startswith("text/plain")
    # bad names and escapes in the path, wrong methods
    assert call(reg, "POST", "/apps/a%20b", instance("a b", "x", 1)).status_code == 400
    assert call(reg, "GET", "/apps/A%zz").status_code == 400
    assert call(reg, "GET", "/apps/A/x%00").status_code == 400
    r = call(reg, "DELETE", "/apps")
    assert r.status_code == 405 and r.headers["Allow"] == "GET, HEAD"
    assert call(reg, "PATCH", "/apps/KEEP/k1").status_code == 405
    assert call(reg, "GET", "/nothing").status_code == 404
    assert call(reg, "PUT", "/apps/KEEP/k1/metadata?team=x").status_code == 501
    # nothing changed, the server is fine
    assert set(by_id(apps_json(reg))) == {"k1"}
    assert requests.get(f"{reg.url}/v1/services", timeout=HTTP_TIMEOUT).json()["services"].keys() \
        == {"keep"}


def test_eureka_changes_are_durable(tmp_path):
    """With --data, Eureka registrations and overrides are answered after
    they are durable and survive a restart."""
    data = tmp_path / "data"
    r = DurableRegistry(data, tmp_path)
    try:
        base = f"http://127.0.0.1:{r.port}/eureka/v2"
        body = instance("ledger", "g1", 8000, host="ledger-host", ip="127.0.0.4",
                        metadata={"v": "1"})
        assert requests.post(f"{base}/apps/LEDGER", json=body, timeout=5).status_code == 204
        assert requests.put(f"{base}/apps/LEDGER/g1/status?value=OUT_OF_SERVICE",
                            timeout=5).status_code == 200
        assert requests.post(f"{base}/apps/LEDGER", json=instance("ledger", "g2", 8001),
                             timeout=5).status_code == 204
        assert requests.delete(f"{base}/apps/LEDGER/g2", timeout=5).status_code == 200
    finally:
        assert r.stop() == 0
    r = DurableRegistry(data, tmp_path)
    try:
        base = f"http://127.0.0.1:{r.port}/eureka/v2"
        got = requests.get(f"{base}/apps/LEDGER", headers=JSON_H, timeout=5).json()
        insts = got["application"]["instance"]
        assert [(i["instanceId"], i["status"], i["hostName"], i["metadata"]) for i in insts] \
            == [("g1", "OUT_OF_SERVICE", "ledger-host", {"v": "1"})]
    finally:
        assert r.stop() == 0


# ------------------------------------------------------------------ Prometheus

def test_prometheus_eureka_sd_discovers_and_scrapes(registry, tmp_path):
    """A real, unmodified Prometheus (Debian's 2.42) with eureka_sd_configs
    reads GET {server}/apps (XML, no Accept header), turns both instances
    into targets with the __meta_eureka_* labels, scrapes them, and drops
    one that is taken OUT_OF_SERVICE (relabelling on the status)."""
    reg = registry()
    m1, m2 = metrics_backend("one"), metrics_backend("two")
    prom = Prometheus(tmp_path, f"""
  - job_name: eureka
    eureka_sd_configs:
      - server: http://127.0.0.1:{reg.port}/eureka/v2
        refresh_interval: 1s
    relabel_configs:
      - source_labels: [__meta_eureka_app_instance_status]
        regex: UP
        action: keep
      - source_labels: [__meta_eureka_app_name]
        target_label: app
      - source_labels: [__meta_eureka_app_instance_metadata_team]
        target_label: team
""")

    def targets():
        return prom.targets("eureka")

    try:
        register(reg, "metrics-demo", "demo-1", m1.port, metadata={"team": "core"})
        register(reg, "metrics-demo", "demo-2", m2.port, host="127.0.0.1",
                 metadata={"team": "edge", "management.port": str(m2.port)})
        want = [("demo-1", f"127.0.0.1:{m1.port}", "up"), ("demo-2", f"127.0.0.1:{m2.port}", "up")]
        ok = wait_for(lambda: [(t["labels"]["instance"], t["discoveredLabels"]["__address__"],
                                t["health"]) for t in (targets() or [])] == want, 60)
        assert ok, (targets(), prom.log_tail())
        t1, t2 = targets()
        d = t1["discoveredLabels"]
        assert d["__meta_eureka_app_name"] == "METRICS-DEMO"
        assert d["__meta_eureka_app_instance_id"] == "demo-1"
        assert d["__meta_eureka_app_instance_hostname"] == "127.0.0.1"
        assert d["__meta_eureka_app_instance_port"] == str(m1.port)
        assert d["__meta_eureka_app_instance_port_enabled"] == "true"
        assert d["__meta_eureka_app_instance_status"] == "UP"
        assert d["__meta_eureka_app_instance_vip_address"] == "metrics-demo"
        assert d["__meta_eureka_app_instance_datacenterinfo_name"] == "MyOwn"
        assert d["__meta_eureka_app_instance_metadata_team"] == "core"
        assert t2["discoveredLabels"]["__meta_eureka_app_instance_metadata_management_port"] \
            == str(m2.port)
        assert (t1["labels"]["app"], t1["labels"]["team"]) == ("METRICS-DEMO", "core")
        assert (t2["labels"]["app"], t2["labels"]["team"]) == ("METRICS-DEMO", "edge")
        # the scrapes really happened: the samples are queryable
        q = urllib.parse.quote('demo_up{job="eureka"}')

        def samples():
            d = prom.api(f"query?query={q}")
            return None if d is None else sorted(s["metric"]["who"] for s in d["result"])

        assert wait_for(lambda: samples() == ["one", "two"], 30), samples()
        # out of service: Prometheus drops the target on its next refresh
        assert call(reg, "PUT", "/apps/METRICS-DEMO/demo-2/status?value=OUT_OF_SERVICE") \
            .status_code == 200
        assert wait_for(lambda: [t["labels"]["instance"] for t in (targets() or [])]
                        == ["demo-1"], 30), targets()
    finally:
        prom.stop()
        m1.close()
        m2.close()
