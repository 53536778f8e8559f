"""A small authoritative DNS server for tests (UDP, and TCP for truncation-free
answers), serving A, AAAA and SRV records from a table the test can change
while it runs. Enough of RFC 1035 for c-ares, dig and HAProxy resolvers.

    dns = DnsServer(); dns.start()
    dns.set("svc.test", "A", ["127.0.0.1"], ttl=1)
    dns.set("_http._tcp.svc.test", "SRV", [(0, 10, 8080, "h1.test")])
    ... dns.port ...; dns.stop()
"""
import socket
import socketserver
import struct
import threading
import time

TYPES = {"A": 1, "AAAA": 28, "SRV": 33}


def _encode_name(name):
    out = b""
    for label in name.rstrip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def _decode_name(buf, off):
    labels = []
    while True:
        ln = buf[off]
        if ln == 0:
            return ".".join(labels), off + 1
        if ln & 0xC0:
            raise ValueError("compressed names are not expected in queries")
        labels.append(buf[off + 1:off + 1 + ln].decode())
        off += 1 + ln


class DnsServer:
    def __init__(self, host="127.0.0.1"):
        self.records = {}  # (name, type) -> (ttl, [values])
        self.lock = threading.Lock()
        self.queries = []
        self.fail = None   # None, or an rcode to answer every query with (2 = SERVFAIL)
        self.fail_names = {}  # name -> rcode to answer queries for that name with
        self.delay = 0.0   # seconds to wait before each answer (a slow resolver)
        srv = self

        class Udp(socketserver.BaseRequestHandler):
            def handle(self):
                data, sock = self.request
                if srv.delay:
                    time.sleep(srv.delay)
                resp = srv.answer(data)
                if resp:
                    sock.sendto(resp, self.client_address)

        self.udp = socketserver.ThreadingUDPServer((host, 0), Udp)
        self.udp.daemon_threads = True
        self.port = self.udp.server_address[1]
        self.thread = None

    def set(self, name, rtype, values, ttl=1):
        with self.lock:
            self.records[(name.lower().rstrip("."), TYPES[rtype])] = (ttl, list(values))

    def clear(self, name, rtype):
        with self.lock:
            self.records.pop((name.lower().rstrip("."), TYPES[rtype]), None)

    def answer(self, q):
        try:
            ident, flags, qd = struct.unpack(">HHH", q[:6])
            name, off = _decode_name(q, 12)
            qtype, qclass = struct.unpack(">HH", q[off:off + 4])
        except (ValueError, struct.error, IndexError):
            return None
        question = q[12:off + 4]
        with self.lock:
            self.queries.append((name, qtype))
            fail = self.fail_names.get(name.lower(), self.fail)
            ttl, values = self.records.get((name.lower(), qtype), (0, []))
            exists = any(k[0] == name.lower() for k in self.records)
        rcode = fail if fail is not None else (0 if exists else 3)  # NXDOMAIN
        answers = b""
        count = 0
        if rcode == 0:
            for v in values:
                if qtype == 1:
                    rdata = socket.inet_pton(socket.AF_INET, v)
                elif qtype == 28:
                    rdata = socket.inet_pton(socket.AF_INET6, v)
                else:
                    prio, weight, port, target = v
                    rdata = struct.pack(">HHH", prio, weight, port) + _encode_name(target)
                answers += b"\xc0\x0c" + struct.pack(">HHIH", qtype, 1, ttl, len(rdata)) + rdata
                count += 1
        hdr = struct.pack(">HHHHHH", ident, 0x8400 | rcode | (flags & 0x0100), 1, count, 0, 0)
        return hdr + question + answers

    def start(self):
        self.thread = threading.Thread(target=self.udp.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self):
        self.udp.shutdown()
        self.udp.server_close()
