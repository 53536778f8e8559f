"""weft registry: the DNS interface (src/registry/dns.c, spec in
src/registry/dns.h) driven through the real binary with real clients: dig,
raw UDP/TCP sockets, HAProxy's resolvers and weft's own gateway (c-ares).

    weft registry --listen 127.0.0.1:0 --dns 127.0.0.1:PORT

Covered: A / AAAA / SRV answers for NAME, _NAME._tcp, _NAME._udp, TAG.NAME
and ID.NAME under service.weft; only healthy instances; TTL 1 and the AA
flag; NXDOMAIN vs NOERROR-no-data; no caching (changes visible at once);
truncation at 512 bytes (TC, record boundary) vs TCP and EDNS0 4096;
FORMERR / NOTIMP / drop for malformed input, which must never kill the
server; two pipelined queries on one TCP connection, and 2,000 whose
answers outgrow the socket buffers (all answered, in order); HAProxy
`server-template` and the weft gateway following the registry.

Every wait is bounded: sockets carry timeouts, subprocesses have timeouts,
polls have deadlines. Each registry is SIGTERMed at teardown and must exit 0
without a sanitizer report.
"""
import collections
import ipaddress
import random
import re
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from gwutil import gateway, origins, origin_of, wait_until  # noqa: F401
from svcutil import Exited, Registry
from weftutil import free_port, stop_process

STOP_TIMEOUT = 5.0

ZONE = "service.weft"
T_A, T_NS, T_SOA, T_MX, T_TXT, T_AAAA, T_SRV, T_OPT = 1, 2, 6, 15, 16, 28, 33, 41
RCODE = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


# ====================================================================== ports

def free_udp_tcp_port():
    """A loopback port free for both UDP and TCP right now."""
    for _ in range(100):
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
        finally:
            t.close()
            u.close()
    raise RuntimeError("no port free for both UDP and TCP")


# ====================================================================== DNS wire

def encode_name(name):
    out = b""
    for label in name.rstrip(".").split("."):
        if label:
            b = label.encode("ascii")
            assert len(b) < 64
            out += bytes([len(b)]) + b
    return out + b"\0"


def build_query(name, qtype, qid=0x1234, opcode=0, rd=True, edns=None):
    """A query message; edns=N adds an OPT record advertising N bytes."""
    flags = (opcode << 11) | (0x0100 if rd else 0)
    msg = struct.pack("!HHHHHH", qid, flags, 1, 0, 0, 1 if edns else 0)
    msg += encode_name(name) + struct.pack("!HH", qtype, 1)
    if edns:
        msg += b"\0" + struct.pack("!HHIH", T_OPT, edns, 0, 0)
    return msg


def read_name(buf, off):
    """(name, offset after it), following compression pointers (bounded)."""
    labels, end, jumps = [], None, 0
    while True:
        if off >= len(buf):
            raise ValueError("name runs past the end of the message")
        ln = buf[off]
        if ln & 0xC0 == 0xC0:
            if off + 1 >= len(buf):
                raise ValueError("truncated compression pointer")
            if end is None:
                end = off + 2
            off = ((ln & 0x3F) << 8) | buf[off + 1]
            jumps += 1
            if jumps > 64:
                raise ValueError("compression loop")
            continue
        if ln & 0xC0:
            raise ValueError(f"bad label type {ln:#x}")
        off += 1
        if ln == 0:
            break
        if off + ln > len(buf):
            raise ValueError("label runs past the end of the message")
        labels.append(buf[off:off + ln].decode("ascii").lower())
        off += ln
    return ".".join(labels) + ".", (end if end is not None else off)


class Msg:
    """A parsed DNS message. Parsing is strict: every count in the header
    must be matched by whole records, and nothing may follow them."""

    def __init__(self, buf):
        if len(buf) < 12:
            raise ValueError(f"message of {len(buf)} bytes")
        self.raw = buf
        (self.id, flags, qd, an, ns, ar) = struct.unpack("!HHHHHH", buf[:12])
        self.qr = bool(flags & 0x8000)
        self.opcode = (flags >> 11) & 0xF
        self.aa = bool(flags & 0x0400)
        self.tc = bool(flags & 0x0200)
        self.rd = bool(flags & 0x0100)
        self.rcode = flags & 0xF
        self.counts = (qd, an, ns, ar)
        off = 12
        self.questions = []
        for _ in range(qd):
            name, off = read_name(buf, off)
            if off + 4 > len(buf):
                raise ValueError("truncated question")
            self.questions.append((name,) + struct.unpack("!HH", buf[off:off + 4]))
            off += 4
        self.answer, off = self._records(buf, off, an)
        self.authority, off = self._records(buf, off, ns)
        self.additional, off = self._records(buf, off, ar)
        if off != len(buf):
            raise ValueError(f"{len(buf) - off} bytes after the last record")

    @staticmethod
    def _records(buf, off, n):
        out = []
        for _ in range(n):
            name, off = read_name(buf, off)
            if off + 10 > len(buf):
                raise ValueError("truncated record header")
            rtype, rclass, ttl, rdlen = struct.unpack("!HHIH", buf[off:off + 10])
            off += 10
            if off + rdlen > len(buf):
                raise ValueError("rdata runs past the end of the message")
            rd = buf[off:off + rdlen]
            if rtype == T_A:
                assert rdlen == 4, rdlen
                data = str(ipaddress.IPv4Address(rd))
            elif rtype == T_AAAA:
                assert rdlen == 16, rdlen
                data = str(ipaddress.IPv6Address(rd))
            elif rtype == T_SRV:
                prio, weight, port = struct.unpack("!HHH", rd[:6])
                target, tend = read_name(buf, off + 6)
                assert tend == off + rdlen, "SRV rdata length does not match its target"
                data = (prio, weight, port, target)
            else:
                data = rd
            out.append((name, rtype, rclass, ttl, data))
            off += rdlen
        return out, off

    @property
    def rcode_name(self):
        return RCODE.get(self.rcode, str(self.rcode))

    def __repr__(self):
        return (f"<Msg id={self.id} qr={self.qr} op={self.opcode} aa={self.aa} tc={self.tc} "
                f"rcode={self.rcode_name} counts={self.counts} an={self.answer} "
                f"ar={self.additional}>")


def udp_exchange(port, msg, timeout=2.0):
    """Send one datagram, return the raw reply (or None on timeout)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.sendto(msg, ("127.0.0.1", port))
        try:
            data, _ = s.recvfrom(65535)
            return data
        except socket.timeout:
            return None
    finally:
        s.close()


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        d = s.recv(n - len(buf))
        if not d:
            raise AssertionError(f"connection closed after {len(buf)} of {n} bytes")
        buf += d
    return buf


def tcp_read_msg(s):
    (n,) = struct.unpack("!H", recv_exact(s, 2))
    return recv_exact(s, n)


# ====================================================================== dig

class Dig:
    """Parsed `dig` output (full, default display)."""

    def __init__(self, argv, proc):
        self.argv = argv
        self.text = proc.stdout + proc.stderr
        m = re.search(r"status: (\w+), id: \d+", self.text)
        self.status = m.group(1) if m else None
        m = re.search(r";; flags:([a-z ]*);", self.text)
        self.flags = set(m.group(1).split()) if m else set()
        m = re.search(r"QUERY: (\d+), ANSWER: (\d+), AUTHORITY: (\d+), ADDITIONAL: (\d+)",
                      self.text)
        self.counts = tuple(int(x) for x in m.groups()) if m else None
        self.sections = collections.defaultdict(list)
        sec = None
        for line in self.text.splitlines():
            h = re.match(r";; (\w+) SECTION:", line)
            if h:
                sec = h.group(1)
                continue
            if not line.strip():
                sec = None
                continue
            if sec and not line.startswith(";"):
                f = line.split()
                self.sections[sec].append((f[0].lower(), int(f[1]), f[2], f[3], f[4:]))

    @property
    def answer(self):
        return self.sections["ANSWER"]

    @property
    def additional(self):
        return self.sections["ADDITIONAL"]

    def __repr__(self):
        return f"`{' '.join(self.argv)}` ->\n{self.text}"


def dig(port, name, qtype="A", *opts):
    argv = ["dig", "@127.0.0.1", "-p", str(port), name, qtype, "+time=2", "+tries=1", *opts]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=15)
    d = Dig(argv, p)
    assert d.status is not None, f"dig got no answer: {d!r}"
    return d


def dig_short(port, name, qtype="A", *opts):
    argv = ["dig", "@127.0.0.1", "-p", str(port), name, qtype, "+short", "+time=2", "+tries=1",
            *opts]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=15)
    assert p.returncode == 0, f"`{' '.join(argv)}` failed ({p.returncode}): {p.stdout}{p.stderr}"
    lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
    assert not any(ln.startswith(";") for ln in lines), f"`{' '.join(argv)}`: {p.stdout}"
    return sorted(lines)


def srv_set(d, section="ANSWER"):
    """{(prio, weight, port, target)} of the SRV records of a dig section."""
    return sorted((int(r[4][0]), int(r[4][1]), int(r[4][2]), r[4][3].lower())
                  for r in d.sections[section] if r[3] == "SRV")


def addr_set(d, section="ANSWER", rtype=None):
    """sorted [(owner, type, address)] of the A/AAAA records of a dig section."""
    return sorted((r[0], r[3], r[4][0]) for r in d.sections[section]
                  if r[3] in ("A", "AAAA") and (rtype is None or r[3] == rtype))


# ====================================================================== registry

class DnsRegistry(Registry):
    """A running `weft registry --listen 127.0.0.1:0 --dns 127.0.0.1:PORT`,
    started once both interfaces answer. put/delete/set_status here take the
    DNS tests' shorthand (service "web", checked for 200)."""

    start_timeout = 15.0

    def __init__(self, workdir, dns_port):
        self.dns_port = dns_port
        super().__init__(workdir, "--dns", f"127.0.0.1:{dns_port}", also=("registry-dns",))

    @classmethod
    def start(cls, workdir):
        """On a free port, trying another if it was taken in between."""
        for _attempt in range(5):
            try:
                return cls(workdir, free_udp_tcp_port())
            except Exited as e:
                last = e
        raise RuntimeError(f"weft registry with --dns did not start: {last}")

    def ready(self):
        assert self.port_of("registry-dns") == self.dns_port, self.text()
        return super().ready() and udp_exchange(self.dns_port,
                                                build_query(f"ready.{ZONE}", T_A), 0.2)

    # -- API -------------------------------------------------------------
    def _ok(self, method, path, body=None):
        st, d = self.req(method, f"/v1/services/{path}", body)
        assert st == 200, (st, d)

    def put(self, iid, address, port=8080, service="web", tags=(), weight=None, ttl=None):
        body = {"address": address, "port": port}
        if tags:
            body["tags"] = list(tags)
        if weight is not None:
            body["weight"] = weight
        if ttl is not None:
            body["ttl"] = ttl
        self._ok("PUT", f"{service}/instances/{iid}", body)

    def delete(self, iid, service="web"):
        self._ok("DELETE", f"{service}/instances/{iid}")

    def set_status(self, iid, status, service="web"):
        self._ok("PUT", f"{service}/instances/{iid}/status", {"status": status})


@pytest.fixture
def reg(tmp_path):
    r = DnsRegistry.start(tmp_path)
    yield r
    r.stop(STOP_TIMEOUT)


def web3(reg):
    """w1..w3 on 127.0.0.1..3, ports 8081..8083, weights 5, 10, 15."""
    for i in (1, 2, 3):
        reg.put(f"w{i}", f"127.0.0.{i}", port=8080 + i, weight=5 * i)


# ====================================================================== A / AAAA

def test_a_lists_exactly_the_healthy_instances(reg):
    web3(reg)
    assert dig_short(reg.dns_port, f"web.{ZONE}") == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    reg.set_status("w2", "DOWN")
    assert dig_short(reg.dns_port, f"web.{ZONE}") == ["127.0.0.1", "127.0.0.3"]
    reg.set_status("w3", "OUT_OF_SERVICE")
    assert dig_short(reg.dns_port, f"web.{ZONE}") == ["127.0.0.1"]
    reg.set_status("w2", "UP")
    reg.set_status("w3", "UP")
    assert dig_short(reg.dns_port, f"web.{ZONE}") == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    # names are case-insensitive
    assert dig_short(reg.dns_port, "WeB.SERVICE.Weft") == ["127.0.0.1", "127.0.0.2",
                                                           "127.0.0.3"]


def test_aaaa_and_ip_literals_only(reg):
    reg.put("v4", "127.0.0.1", port=8001)
    reg.put("v6", "::1", port=8002)
    reg.put("byname", "localhost", port=8003)  # not an IP literal: no address record
    assert dig_short(reg.dns_port, f"web.{ZONE}", "AAAA") == ["::1"]
    assert dig_short(reg.dns_port, f"web.{ZONE}", "A") == ["127.0.0.1"]
    assert dig_short(reg.dns_port, f"v6.web.{ZONE}", "AAAA") == ["::1"]
    d = dig(reg.dns_port, f"v6.web.{ZONE}", "A")  # exists, but has no A
    assert d.status == "NOERROR" and d.answer == [], d
    d = dig(reg.dns_port, f"v4.web.{ZONE}", "AAAA")
    assert d.status == "NOERROR" and d.answer == [], d


def test_ttl_is_one_and_answers_are_authoritative(reg):
    web3(reg)
    for name, qtype in ((f"web.{ZONE}", "A"), (f"_web._tcp.{ZONE}", "SRV"),
                        (f"w1.web.{ZONE}", "A")):
        d = dig(reg.dns_port, name, qtype)
        assert d.status == "NOERROR", d
        assert {"qr", "aa"} <= d.flags and "tc" not in d.flags, d
        assert d.answer and all(r[1] == 1 for r in d.answer), d
        assert all(r[1] == 1 for r in d.additional), d
    # the short answer-only form shows the TTL column as 1 too
    p = subprocess.run(["dig", "@127.0.0.1", "-p", str(reg.dns_port), f"web.{ZONE}", "A",
                        "+noall", "+answer", "+time=2", "+tries=1"],
                       capture_output=True, text=True, timeout=15)
    rows = [ln.split() for ln in p.stdout.splitlines() if ln.strip()]
    assert len(rows) == 3 and all(r[1] == "1" and r[3] == "A" for r in rows), p.stdout
    # the raw header: QR and AA set, RD echoed, question echoed, id echoed
    m = Msg(udp_exchange(reg.dns_port, build_query(f"web.{ZONE}", T_A, qid=0xBEEF)))
    assert m.id == 0xBEEF and m.qr and m.aa and m.rd and not m.tc and m.rcode == 0, m
    assert m.questions == [(f"web.{ZONE}.", T_A, 1)], m
    assert sorted(r[4] for r in m.answer) == ["127.0.0.1", "127.0.0.2", "127.0.0.3"], m


# ====================================================================== SRV

def test_srv_records_with_additional_addresses(reg):
    web3(reg)
    reg.set_status("w2", "DOWN")
    want = [(1, 5, 8081, f"w1.web.{ZONE}."), (1, 15, 8083, f"w3.web.{ZONE}.")]
    want_add = [(f"w1.web.{ZONE}.", "A", "127.0.0.1"), (f"w3.web.{ZONE}.", "A", "127.0.0.3")]
    for name in (f"_web._tcp.{ZONE}", f"_web._udp.{ZONE}", f"web.{ZONE}"):
        d = dig(reg.dns_port, name, "SRV")
        assert d.status == "NOERROR" and "aa" in d.flags, d
        assert srv_set(d) == want, d
        assert [r[0] for r in d.answer] == [name + "."] * 2, d
        assert addr_set(d, "ADDITIONAL") == want_add, d
    # the SRV targets resolve, one instance each
    assert dig_short(reg.dns_port, f"w1.web.{ZONE}") == ["127.0.0.1"]
    assert dig_short(reg.dns_port, f"w3.web.{ZONE}") == ["127.0.0.3"]
    # an IPv6 target's AAAA goes in the additional section as well
    reg.put("w6", "::1", port=8086, weight=7)
    d = dig(reg.dns_port, f"_web._tcp.{ZONE}", "SRV")
    assert srv_set(d) == sorted(want + [(1, 7, 8086, f"w6.web.{ZONE}.")]), d
    assert addr_set(d, "ADDITIONAL") == sorted(want_add + [(f"w6.web.{ZONE}.", "AAAA", "::1")]), d


def test_instance_name_resolves_one_instance(reg):
    web3(reg)
    d = dig(reg.dns_port, f"w2.web.{ZONE}", "A")
    assert d.status == "NOERROR" and "aa" in d.flags, d
    assert addr_set(d) == [(f"w2.web.{ZONE}.", "A", "127.0.0.2")], d
    assert dig_short(reg.dns_port, f"W3.Web.{ZONE}") == ["127.0.0.3"]


def test_unknown_label_under_a_known_service_is_nxdomain(reg):
    reg.put("w1", "127.0.0.1", port=8001, tags=["blue"])
    # "nope" is neither an instance id nor a tag of web: an unknown name
    for qtype in ("A", "SRV"):
        d = dig(reg.dns_port, f"nope.web.{ZONE}", qtype)
        assert d.status == "NXDOMAIN" and d.answer == [] and "aa" in d.flags, d
    # an instance that was deregistered is unknown as well
    reg.put("gone", "127.0.0.2", port=8002)
    reg.delete("gone")
    d = dig(reg.dns_port, f"gone.web.{ZONE}", "A")
    assert d.status == "NXDOMAIN" and d.answer == [], d


def test_tag_selects_tagged_instances(reg):
    reg.put("b1", "127.0.0.1", port=9001, tags=["blue"], weight=3)
    reg.put("b2", "127.0.0.2", port=9002, tags=["blue", "canary"], weight=4)
    reg.put("g1", "127.0.0.3", port=9003, tags=["green"], weight=5)
    assert dig_short(reg.dns_port, f"blue.web.{ZONE}") == ["127.0.0.1", "127.0.0.2"]
    assert dig_short(reg.dns_port, f"green.web.{ZONE}") == ["127.0.0.3"]
    assert dig_short(reg.dns_port, f"canary.web.{ZONE}") == ["127.0.0.2"]
    d = dig(reg.dns_port, f"blue.web.{ZONE}", "SRV")
    assert d.status == "NOERROR", d
    assert srv_set(d) == [(1, 3, 9001, f"b1.web.{ZONE}."), (1, 4, 9002, f"b2.web.{ZONE}.")], d
    # only healthy tagged instances
    reg.set_status("b1", "DOWN")
    assert dig_short(reg.dns_port, f"blue.web.{ZONE}") == ["127.0.0.2"]


# ====================================================================== rcodes

def test_unknown_service_is_nxdomain(reg):
    web3(reg)
    for name, qtype in ((f"nosuch.{ZONE}", "A"), (f"_nosuch._tcp.{ZONE}", "SRV"),
                        (f"w1.nosuch.{ZONE}", "A")):
        d = dig(reg.dns_port, name, qtype)
        assert d.status == "NXDOMAIN" and d.answer == [] and "aa" in d.flags, d
    # outside the zone: not ours (docs/registry.md: REFUSED)
    d = dig(reg.dns_port, "example.com", "A")
    assert d.status == "REFUSED" and d.answer == [], d


def test_no_healthy_instance_is_noerror_without_answers(reg):
    reg.put("d1", "127.0.0.1", port=8001)
    reg.set_status("d1", "DOWN")
    for name, qtype in ((f"web.{ZONE}", "A"), (f"_web._tcp.{ZONE}", "SRV")):
        d = dig(reg.dns_port, name, qtype)
        assert d.status == "NOERROR" and d.counts[1] == 0 and d.answer == [], d
        assert "aa" in d.flags, d


def test_type_without_data_is_noerror_without_answers(reg):
    web3(reg)
    for name, qtype in ((f"web.{ZONE}", "TXT"), (f"web.{ZONE}", "MX"),
                        (f"w1.web.{ZONE}", "TXT")):
        d = dig(reg.dns_port, name, qtype)
        assert d.status == "NOERROR" and d.counts[1] == 0 and d.answer == [], d


# ====================================================================== sizes

def register_60(reg):
    for i in range(1, 61):
        reg.put(f"n{i}", f"127.0.1.{i}", port=10000 + i)
    return sorted(f"127.0.1.{i}" for i in range(1, 61))


def test_udp_answer_over_512_bytes_is_truncated(reg):
    register_60(reg)
    d = dig(reg.dns_port, f"web.{ZONE}", "A", "+noedns", "+ignore")
    assert d.status == "NOERROR" and "tc" in d.flags, d
    assert len(d.answer) < 60 and d.counts[1] == len(d.answer), d
    # the raw datagram: at most 512 bytes, TC, cut at a record boundary
    raw = udp_exchange(reg.dns_port, build_query(f"web.{ZONE}", T_A))
    assert raw is not None and len(raw) <= 512, None if raw is None else len(raw)
    m = Msg(raw)  # strict: the counts match whole records exactly
    assert m.tc and m.rcode == 0 and len(m.answer) < 60, m
    assert all(r[1] == T_A and r[4].startswith("127.0.1.") for r in m.answer), m
    # SRV with additional records: same rule
    raw = udp_exchange(reg.dns_port, build_query(f"_web._tcp.{ZONE}", T_SRV))
    assert raw is not None and len(raw) <= 512, None if raw is None else len(raw)
    m = Msg(raw)
    assert m.tc and len(m.answer) < 60, m


def test_tcp_and_edns_4096_carry_all_60_answers(reg):
    want = register_60(reg)
    d = dig(reg.dns_port, f"web.{ZONE}", "A", "+tcp")
    assert d.status == "NOERROR" and "tc" not in d.flags, d
    assert sorted(r[4][0] for r in d.answer) == want, d
    d = dig(reg.dns_port, f"web.{ZONE}", "A", "+bufsize=4096", "+ignore")
    assert d.status == "NOERROR" and "tc" not in d.flags, d
    assert "(UDP)" in d.text, d
    assert sorted(r[4][0] for r in d.answer) == want, d
    raw = udp_exchange(reg.dns_port, build_query(f"web.{ZONE}", T_A, edns=4096))
    assert raw is not None and 512 < len(raw) <= 4096, None if raw is None else len(raw)
    m = Msg(raw)
    assert not m.tc and sorted(r[4] for r in m.answer) == want, m
    # SRV over TCP: every record and every target address
    d = dig(reg.dns_port, f"_web._tcp.{ZONE}", "SRV", "+tcp")
    assert len(srv_set(d)) == 60 and "tc" not in d.flags, d
    assert sorted(a for _, _, a in addr_set(d, "ADDITIONAL")) == want, d


# ====================================================================== freshness

def test_changes_are_visible_immediately(reg):
    reg.put("keep", "127.0.0.9", port=8009)
    for i in range(1, 4):
        reg.put(f"x{i}", f"127.0.0.{i}", port=8000 + i)
        assert dig_short(reg.dns_port, f"web.{ZONE}") == sorted(
            ["127.0.0.9", f"127.0.0.{i}"]), i
        assert dig_short(reg.dns_port, f"x{i}.web.{ZONE}") == [f"127.0.0.{i}"]
        reg.delete(f"x{i}")
        assert dig_short(reg.dns_port, f"web.{ZONE}") == ["127.0.0.9"], i
        d = dig(reg.dns_port, f"x{i}.web.{ZONE}", "A")
        assert d.answer == [], d
    # an update of the address shows at once too
    reg.put("keep", "127.0.0.8", port=8009)
    assert dig_short(reg.dns_port, f"web.{ZONE}") == ["127.0.0.8"]


# ====================================================================== robustness

def expect_formerr(port, pkt, what):
    raw = udp_exchange(port, pkt, timeout=1.0)
    assert raw is not None, f"{what}: no reply (expected FORMERR)"
    qid, flags = struct.unpack("!HH", raw[:4])
    assert qid == struct.unpack("!H", pkt[:2])[0], f"{what}: id {qid:#x}"
    assert flags & 0x8000, f"{what}: QR not set in {raw!r}"
    assert raw[3] & 0xF == 1, f"{what}: rcode {raw[3] & 0xF}, expected FORMERR (1): {raw!r}"


def test_malformed_udp_never_kills_the_server(reg):
    web3(reg)
    port = reg.dns_port
    rng = random.Random(20240611)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for i in range(200):
            n = rng.randint(0, 600)
            s.sendto(bytes(rng.getrandbits(8) for _ in range(n)), ("127.0.0.1", port))
            if i % 20 == 19:
                time.sleep(0.01)  # do not just overflow the socket buffer
    finally:
        s.close()
    hdr = lambda qid, qd, flags=0x0100: struct.pack("!HHHHHH", qid, flags, qd, 0, 0, 0)  # noqa
    # header only, claiming 5 questions
    expect_formerr(port, hdr(0x0501, 5), "header with qdcount=5 and no questions")
    # a label length pointing past the end
    expect_formerr(port, hdr(0x0502, 1) + b"\x03web\x3fab", "label past the end")
    # a compression pointer to itself at offset 12 (loop)
    expect_formerr(port, hdr(0x0503, 1) + b"\xc0\x0c" + struct.pack("!HH", T_A, 1),
                   "compression pointer loop")
    # a compression pointer past the end
    expect_formerr(port, hdr(0x0504, 1) + b"\xc0\xff" + struct.pack("!HH", T_A, 1),
                   "compression pointer past the end")
    # a question without qtype/qclass
    expect_formerr(port, hdr(0x0505, 1) + encode_name(f"web.{ZONE}"), "question cut short")
    # shorter than a header: nothing can be answered, dropped
    for junk in (b"", b"\x12", b"\x12\x34\x01\x00\x00"):
        assert udp_exchange(port, junk, timeout=0.3) is None, junk
    # more survivors (no rcode asserted): a response, a huge name, reserved
    # label types, trailing garbage, qdcount=0, 255-deep pointer chains
    chain = b"".join(struct.pack("!H", 0xC000 | (12 + 2 * (k + 1))) for k in range(200)) + b"\0"
    long_name = b"".join(b"\x3f" + b"a" * 63 for _ in range(5)) + b"\0"
    for pkt in (build_query(f"web.{ZONE}", T_A)[:2] + b"\x84\x00" +
                build_query(f"web.{ZONE}", T_A)[4:],
                hdr(0x0601, 1) + long_name + struct.pack("!HH", T_A, 1),
                hdr(0x0602, 1) + b"\x41" + b"x" * 80 + b"\0" + struct.pack("!HH", T_A, 1),
                hdr(0x0603, 1) + b"\x80abc\0" + struct.pack("!HH", T_A, 1),
                build_query(f"web.{ZONE}", T_A) + b"\xff" * 40,
                hdr(0x0604, 0),
                hdr(0x0605, 1) + chain + struct.pack("!HH", T_A, 1),
                struct.pack("!HHHHHH", 0x0606, 0x0100, 1, 0, 0, 1) + encode_name("web.service.weft")
                + struct.pack("!HH", T_A, 1) + b"\0" + struct.pack("!HHIH", T_OPT, 4096, 0, 100),
                build_query(f"web.{ZONE}", T_A, edns=1)):
        udp_exchange(port, pkt, timeout=0.3)
    assert reg.alive(), reg.stderr[-4000:]
    assert dig_short(port, f"web.{ZONE}") == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    assert dig_short(port, f"web.{ZONE}", "A", "+tcp") == ["127.0.0.1", "127.0.0.2",
                                                           "127.0.0.3"]


def test_non_query_opcode_gets_notimp(reg):
    web3(reg)
    for opcode, qid in ((2, 0x0202), (1, 0x0101), (4, 0x0404), (5, 0x0505)):
        raw = udp_exchange(reg.dns_port, build_query(f"web.{ZONE}", T_A, qid=qid,
                                                     opcode=opcode))
        assert raw is not None and len(raw) >= 12, f"opcode {opcode}: no reply"
        assert struct.unpack("!H", raw[:2])[0] == qid, raw
        assert raw[2] & 0x80, f"opcode {opcode}: QR not set: {raw!r}"
        assert raw[3] & 0xF == 4, \
            f"opcode {opcode}: rcode {raw[3] & 0xF}, expected NOTIMP (4): {raw!r}"
    assert dig_short(reg.dns_port, f"web.{ZONE}") == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]


def test_malformed_tcp_never_kills_the_server(reg):
    web3(reg)
    port = reg.dns_port
    cases = (b"",                                   # connect and close
             b"\x00",                               # half a length
             b"\x00\x00",                           # zero-length message
             b"\x00\x05abcde",                      # shorter than a header
             b"\x03\xe8" + b"x" * 100,              # announces 1000, sends 100, closes
             b"\xff\xff" + bytes(range(256)) * 4)   # announces 65535, sends 1 KiB
    for data in cases:
        s = socket.create_connection(("127.0.0.1", port), timeout=2)
        s.sendall(data)
        s.close()
    # a malformed message with a header gets FORMERR over TCP as well
    s = socket.create_connection(("127.0.0.1", port), timeout=3)
    try:
        bad = struct.pack("!HHHHHH", 0x0707, 0x0100, 5, 0, 0, 0)
        s.sendall(struct.pack("!H", len(bad)) + bad)
        raw = tcp_read_msg(s)
        assert raw[:2] == b"\x07\x07" and raw[2] & 0x80 and raw[3] & 0xF == 1, raw
    finally:
        s.close()
    assert reg.alive(), reg.stderr[-4000:]
    assert dig_short(port, f"web.{ZONE}", "A", "+tcp") == ["127.0.0.1", "127.0.0.2",
                                                           "127.0.0.3"]


# ====================================================================== TCP

def test_tcp_two_pipelined_queries_answered_in_order(reg):
    web3(reg)
    q1 = build_query(f"web.{ZONE}", T_A, qid=0x1111)
    q2 = build_query(f"_web._tcp.{ZONE}", T_SRV, qid=0x2222)
    s = socket.create_connection(("127.0.0.1", reg.dns_port), timeout=3)
    try:
        s.sendall(struct.pack("!H", len(q1)) + q1 + struct.pack("!H", len(q2)) + q2)
        m1, m2 = Msg(tcp_read_msg(s)), Msg(tcp_read_msg(s))
        assert m1.id == 0x1111 and m1.qr and m1.aa and not m1.tc and m1.rcode == 0, m1
        assert sorted(r[4] for r in m1.answer) == ["127.0.0.1", "127.0.0.2", "127.0.0.3"], m1
        assert m2.id == 0x2222 and m2.qr and m2.rcode == 0, m2
        assert sorted(r[4] for r in m2.answer) == [
            (1, 5 * i, 8080 + i, f"w{i}.web.{ZONE}.") for i in (1, 2, 3)], m2
        # the connection stays usable: a third query, sent in 1-byte pieces
        q = build_query(f"w2.web.{ZONE}", T_A, qid=0x3333)
        q3 = struct.pack("!H", len(q)) + q
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for b in q3:
            s.sendall(bytes([b]))
            time.sleep(0.002)
        m3 = Msg(tcp_read_msg(s))
        assert m3.id == 0x3333 and [r[4] for r in m3.answer] == ["127.0.0.2"], m3
    finally:
        s.close()


def test_tcp_many_pipelined_queries_all_answered_with_backpressure(reg):
    """RFC 7766 section 6.2.1: 2,000 pipelined queries on one connection all
    get an answer, even though the answers (about 2.5 KB each) are far more
    than the socket buffers hold while the client is not reading yet."""
    for i in range(40):
        reg.put(f"p{i}", f"127.0.1.{i + 1}", port=30000 + i)
    n = 2000
    q = [build_query(f"_web._tcp.{ZONE}", T_SRV, qid=i) for i in range(n)]
    data = b"".join(struct.pack("!H", len(m)) + m for m in q)
    s = socket.create_connection(("127.0.0.1", reg.dns_port), timeout=5)
    sent = []
    # the server stops reading while its answers wait: send from a thread
    t = threading.Thread(target=lambda: sent.append(s.sendall(data)), daemon=True)
    try:
        t.start()
        time.sleep(1.0)                         # not reading: the buffers fill
        ids = []
        for _ in range(20):                     # then slowly
            ids.append(Msg(tcp_read_msg(s)).id)
            time.sleep(0.02)
        while len(ids) < n:
            m = Msg(tcp_read_msg(s))
            assert m.rcode == 0 and not m.tc and len(m.answer) == 40, m.counts
            ids.append(m.id)
        t.join(5)
        assert sent == [None]
    finally:
        s.close()
    assert ids == list(range(n))
    assert reg.alive(), reg.stderr[-4000:]


# ====================================================================== HAProxy

class HAProxy:
    def __init__(self, workdir, dns_port):
        self.dir = Path(workdir)
        self.fe_port = free_port()
        cfg = self.dir / "haproxy.cfg"
        cfg.write_text(f"""
global
    nbthread 1
    maxconn 1000

defaults
    mode http
    timeout connect 1s
    timeout client 5s
    timeout server 5s

resolvers weftdns
    nameserver reg 127.0.0.1:{dns_port}
    accepted_payload_size 8192
    hold valid 1s
    resolve_retries 3
    timeout resolve 1s
    timeout retry 1s

frontend fe
    bind 127.0.0.1:{self.fe_port}
    default_backend be

backend be
    balance roundrobin
    server-template web 5 _web._tcp.service.weft resolvers weftdns init-addr none check inter 500ms
""")
        self.log = self.dir / "haproxy.log"
        self._errf = open(self.log, "wb")
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdin=subprocess.DEVNULL,
                                     stdout=self._errf, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited ({self.proc.returncode}):\n{self.text}")
            try:
                socket.create_connection(("127.0.0.1", self.fe_port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"haproxy not listening:\n{self.text}")
                time.sleep(0.05)

    @property
    def text(self):
        return self.log.read_text(errors="replace")

    def get(self):
        try:
            r = requests.get(f"http://127.0.0.1:{self.fe_port}/via-haproxy", timeout=3,
                             headers={"Connection": "close"})
        except requests.RequestException as e:
            return f"error:{type(e).__name__}"
        return r.headers.get("X-Origin") if r.status_code == 200 else r.status_code

    def spread(self, n):
        return collections.Counter(self.get() for _ in range(n))

    def stop(self):
        stop_process(self.proc)
        self._errf.close()


@pytest.fixture
def haproxy(tmp_path):
    made = []

    def start(dns_port):
        h = HAProxy(tmp_path, dns_port)
        made.append(h)
        return h

    yield start
    for h in made:
        h.stop()


def test_haproxy_server_template_follows_the_registry(reg, origins, haproxy):  # noqa: F811
    a, b, c = origins(3)
    for o in (a, b):
        reg.put(o.name, "127.0.0.1", port=o.port)
    h = haproxy(reg.dns_port)
    try:
        wait_until(lambda: set(h.spread(8)) == {a.name, b.name}, timeout=10,
                   what="HAProxy sends to the two registered origins")
        cnt = h.spread(20)
        assert set(cnt) == {a.name, b.name}, cnt
        # a new registration starts receiving traffic within a few seconds
        reg.put(c.name, "127.0.0.1", port=c.port)
        wait_until(lambda: h.spread(6)[c.name] > 0, timeout=8, interval=0.2,
                   what="HAProxy picks up the newly registered origin")
        wait_until(lambda: set(h.spread(9)) == {a.name, b.name, c.name}, timeout=5,
                   what="all three origins in rotation")
        # a deregistered one stops receiving traffic
        reg.delete(a.name)
        wait_until(lambda: set(h.spread(6)) == {b.name, c.name}, timeout=8, interval=0.2,
                   what="HAProxy drops the deregistered origin")
        before = a.count()
        cnt = h.spread(20)
        assert set(cnt) == {b.name, c.name}, cnt
        assert a.count() == before, "the deregistered origin still received requests"
    except AssertionError as e:
        raise AssertionError(f"{e}\n--- haproxy output:\n{h.text[-3000:]}") from None


# ====================================================================== gateway

def test_gateway_dns_discovery_from_the_registry(reg, origins, gateway):  # noqa: F811
    a, b, c = origins(3)
    reg.put(a.name, "127.0.0.1", port=a.port, weight=1)
    reg.put(b.name, "127.0.0.1", port=b.port, weight=3)
    resolver = f"127.0.0.1:{reg.dns_port}"
    g = gateway(f"""
clusters:
  web:
    dns: {{name: _web._tcp.service.weft, type: srv, resolver: "{resolver}", refresh: 1s}}
    lb: weighted_round_robin
    outlier_detection: false
routes:
  - cluster: web
    retry: false
""")

    def eps():
        return sorted((e["address"], e["weight"]) for e in g.cluster("web")["endpoints"])

    wait_until(lambda: eps() == sorted([(a.addr, 1), (b.addr, 3)]), timeout=5,
               what="gateway endpoints from the registry's SRV records")

    def spread(n):
        cnt = collections.Counter()
        with g.client() as cl:
            for _ in range(n):
                r = cl.get("/via-gateway")
                cnt[origin_of(r) if r.status == 200 else r.status] += 1
        return cnt

    cnt = spread(40)
    assert cnt == {a.name: 10, b.name: 30}, cnt
    reg.put(c.name, "127.0.0.1", port=c.port, weight=1)
    wait_until(lambda: eps() == sorted([(a.addr, 1), (b.addr, 3), (c.addr, 1)]), timeout=5,
               what="new registration reaches the gateway")
    reg.delete(a.name)
    wait_until(lambda: eps() == sorted([(b.addr, 3), (c.addr, 1)]), timeout=5,
               what="deregistration reaches the gateway")
    a.clear()
    cnt = spread(40)
    assert cnt == {b.name: 30, c.name: 10}, cnt
    assert a.count() == 0


def test_tcp_srv_answer_carries_more_than_256_instances(reg):
    """Over TCP an answer is never cut: a service with 300 instances gets
    300 SRV records (the additional addresses may stop earlier)."""
    for i in range(300):
        reg.put(f"s{i}", f"127.0.{2 + i // 250}.{i % 250 + 1}", port=20000 + i)
    s = socket.create_connection(("127.0.0.1", reg.dns_port), timeout=5)
    try:
        q = build_query(f"_web._tcp.{ZONE}", T_SRV, qid=0x4242)
        s.sendall(struct.pack("!H", len(q)) + q)
        m = Msg(tcp_read_msg(s))
    finally:
        s.close()
    assert m.id == 0x4242 and m.rcode == 0 and not m.tc, m.counts
    assert sorted(r[4][2] for r in m.answer) == list(range(20000, 20300)), m.counts
    assert all(r[1] == T_SRV for r in m.answer)


def test_names_with_many_labels_get_refused_or_nxdomain_not_formerr(reg):
    """A query for a name of more than 8 labels is well-formed: out of the
    zone it is REFUSED, in the zone it names nothing (NXDOMAIN)."""
    web3(reg)
    d = dig(reg.dns_port, "a.b.c.d.e.f.g.h.i.example.com", "A")
    assert d.status == "REFUSED", d
    d = dig(reg.dns_port, f"1.2.3.4.5.6.7.w1.web.{ZONE}", "A")
    assert d.status == "NXDOMAIN", d
    raw = udp_exchange(reg.dns_port, build_query(f"x.y.z.q.r.s.t.u.web.{ZONE}", T_SRV, qid=0x0909))
    m = Msg(raw)
    assert m.id == 0x0909 and m.rcode_name == "NXDOMAIN", m
    assert m.questions == [(f"x.y.z.q.r.s.t.u.web.{ZONE}.", T_SRV, 1)], m
    assert dig_short(reg.dns_port, f"w1.web.{ZONE}") == ["127.0.0.1"]


def test_edns_query_gets_opt_back_with_nxdomain_and_refused(reg):
    """RFC 6891 section 7: a responder answers a query that has an OPT record
    with one, whatever the rcode (a resolver that sees none concludes the
    server lacks EDNS and falls back to 512-byte answers)."""
    web3(reg)
    for name, rcode in ((f"nosuch.{ZONE}", "NXDOMAIN"), ("www.example.com", "REFUSED"),
                        (f"web.{ZONE}", "NOERROR")):
        m = Msg(udp_exchange(reg.dns_port, build_query(name, T_A, qid=0x0e0e, edns=1232)))
        assert m.id == 0x0e0e and m.rcode_name == rcode, m
        assert [r[1] for r in m.additional] == [T_OPT], (name, m)
        assert m.questions == [(name + ".", T_A, 1)], m
        d = dig(reg.dns_port, name, "A", "+edns=0")
        assert d.status == rcode and "OPT PSEUDOSECTION" in d.text, d


def test_label_with_a_zero_byte_names_nothing(reg):
    """A label is a byte string: 'web\\000' (four bytes) is not the service
    'web', nor is 'w1\\000x' its instance w1."""
    web3(reg)
    d = dig(reg.dns_port, f"web\\000.{ZONE}", "A")
    assert d.status == "NXDOMAIN" and d.answer == [], d
    d = dig(reg.dns_port, f"w1\\000x.web.{ZONE}", "A")
    assert d.status == "NXDOMAIN" and d.answer == [], d
    d = dig(reg.dns_port, f"_web\\000._tcp.{ZONE}", "SRV")
    assert d.status == "NXDOMAIN" and d.answer == [], d
    assert dig_short(reg.dns_port, f"web.{ZONE}") == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]


def test_edns_version_above_zero_gets_badvers(reg):
    """RFC 6891 section 6.1.3: a query whose OPT record has VERSION > 0 gets
    BADVERS (extended RCODE 16: the OPT TTL's upper 8 bits are 1, the header
    RCODE 0) and an OPT record of version 0, the version the server speaks."""
    web3(reg)
    for name in (f"web.{ZONE}", "www.example.com"):
        q = build_query(name, T_A, qid=0x0b0b, edns=1232)
        q = q[:-6] + struct.pack("!BBH", 0, 1, 0) + q[-2:]    # OPT TTL: ext-rcode 0, VERSION 1
        m = Msg(udp_exchange(reg.dns_port, q))
        assert m.id == 0x0b0b and m.qr and m.rcode == 0 and m.answer == [], m
        assert [r[1] for r in m.additional] == [T_OPT], m
        ttl = m.additional[0][3]
        assert ttl >> 24 == 1 and (ttl >> 16) & 0xFF == 0, f"OPT TTL {ttl:#010x}"
        assert m.questions == [(name + ".", T_A, 1)], m
    d = dig(reg.dns_port, f"web.{ZONE}", "A", "+edns=1", "+noednsnegotiation")
    assert d.status == "BADVERS" and "OPT PSEUDOSECTION" in d.text, d
    # version 0 is still answered
    m = Msg(udp_exchange(reg.dns_port, build_query(f"web.{ZONE}", T_A, qid=0x0c0c, edns=1232)))
    assert m.rcode == 0 and len(m.answer) == 3, m


def test_name_of_256_octets_is_formerr_255_is_not(reg):
    """RFC 1035 section 2.3.4: a name is at most 255 octets on the wire
    (length bytes and the root's 0 included)."""
    web3(reg)
    for last, want in ((48, "NXDOMAIN"), (49, "FORMERR")):
        name = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * last, ZONE])
        assert len(encode_name(name)) == 206 + last + 1
        q = build_query(name, T_A, qid=0x0d0d)
        if want == "FORMERR":
            expect_formerr(reg.dns_port, q, "a 256-octet name")
        else:
            m = Msg(udp_exchange(reg.dns_port, q))
            assert m.id == 0x0d0d and m.rcode_name == want, m
    assert dig_short(reg.dns_port, f"web.{ZONE}") == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]


def test_refused_answers_are_not_authoritative(reg):
    """The server is authoritative for service.weft only: a REFUSED answer
    for a name outside it (or another class) does not set AA, while
    NXDOMAIN and answers in the zone do."""
    web3(reg)
    for q in (build_query("www.example.com", T_A, qid=0x0a0a),
              build_query("www.example.com", T_A, qid=0x0a0a, edns=1232),
              build_query(f"weft.{ZONE}.example", T_SRV, qid=0x0a0a)):
        m = Msg(udp_exchange(reg.dns_port, q))
        assert m.id == 0x0a0a and m.rcode_name == "REFUSED" and not m.aa, m
    chaos = build_query(f"web.{ZONE}", T_A, qid=0x0a0a)[:-2] + struct.pack("!H", 3)
    m = Msg(udp_exchange(reg.dns_port, chaos))
    assert m.rcode_name == "REFUSED" and not m.aa, m
    d = dig(reg.dns_port, "www.example.com", "A")
    assert d.status == "REFUSED" and "aa" not in d.flags, d
    d = dig(reg.dns_port, f"nosuch.{ZONE}", "A")
    assert d.status == "NXDOMAIN" and "aa" in d.flags, d
