"""Helpers for the `weft gateway` integration tests.

- Origin: a controllable HTTP/1.1 origin server (raw sockets, one thread per
  connection) on 127.0.0.1:0 that records every request and can be switched
  between answering normally, failing with a status, sleeping, resetting the
  connection, closing without an answer, hanging, and refusing connections.
- Gateway: a running `weft gateway` (config in a temp file, proxy and admin
  listeners on 127.0.0.1:0, addresses taken from its listening lines).
- Nginx: a real nginx origin (`return 200`).
- Client: a keep-alive raw-socket HTTP/1.1 client; parallel() for load.
- Blackhole: a loopback address where connects hang.
- Fixtures (import them into the test module): `gateway`, `origins`,
  `nginx_origin`, `blackhole`.

Everything is bounded: sockets have timeouts and every wait has a deadline.
"""
import concurrent.futures
import hashlib
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import weftutil  # noqa: E402
from svcutil import REPO, WEFT_BIN, Proc, stop_all, wait_until  # noqa: E402,F401
from weftutil import Reader, parse_metrics  # noqa: E402

HEALTH_PATH = "/health"


# ====================================================================== origin

class Rec:
    """One request as received by an origin."""

    def __init__(self, method, target, version, headers, body, conn_id):
        self.method = method
        self.target = target
        self.path, _, self.query = target.partition("?")
        self.version = version
        self.headers = headers  # [(name, value)] in order
        self.body = body
        self.conn_id = conn_id
        self.t = time.monotonic()

    def header(self, name, default=None):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return default

    def header_all(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def __repr__(self):
        return f"<Rec {self.method} {self.target} {self.headers}>"


def pattern_block():
    return weftutil.bytes_pattern_block()


class _ConnReader:
    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()

    def _fill(self):
        d = self.sock.recv(65536)
        if not d:
            return False
        self.buf += d
        return True

    def until(self, sep, limit=1 << 20):
        while True:
            i = self.buf.find(sep)
            if i >= 0:
                out = bytes(self.buf[:i + len(sep)])
                del self.buf[:i + len(sep)]
                return out
            if len(self.buf) > limit or not self._fill():
                return None

    def exact(self, n):
        while len(self.buf) < n:
            if not self._fill():
                return None
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out


class Origin:
    """A controllable HTTP/1.1 origin on 127.0.0.1.

    Modes (set_mode): "ok" (200 + JSON naming the origin), "status" (answer
    with `status`), "sleep" (wait delay_ms, then answer with `status`),
    "reset" (RST right after reading the request), "close" (FIN without an
    answer), "hang" (read the request, never answer). refuse() stops
    listening (and closes open connections); resume() listens again on the
    same port. GET /health answers `health_status` whatever the mode and is
    counted in health_hits, not in requests. GET /big?n=N streams N bytes
    of the weftutil /bytes pattern (/chunked, /eof and /trunc: see
    _send_stream); /status/NNN answers NNN.
    """

    def __init__(self, name, port=0):
        self.name = name
        self.lock = threading.Lock()
        self.requests = []
        self.health_hits = 0
        self.mode = "ok"
        self.status = 200
        self.delay_ms = 0
        self.health_status = 200
        self.extra_headers = []  # added to every normal response
        self._conns = {}
        self._next_conn = 0
        self._stopped = threading.Event()
        self._lsock = None
        self._accept_thread = None
        self.port = port
        self._listen()

    # -- control --------------------------------------------------------
    @property
    def addr(self):
        return f"127.0.0.1:{self.port}"

    def set_mode(self, mode, status=None, delay_ms=None):
        assert mode in ("ok", "status", "sleep", "reset", "close", "hang"), mode
        with self.lock:
            self.mode = mode
            self.status = status if status is not None else (200 if mode in ("ok", "sleep")
                                                             else self.status)
            if delay_ms is not None:
                self.delay_ms = delay_ms

    def open_connections(self):
        with self.lock:
            return len(self._conns)

    def conn_ids(self):
        with self.lock:
            return [r.conn_id for r in self.requests]

    def count(self, path=None, method=None):
        with self.lock:
            return sum(1 for r in self.requests
                       if (path is None or r.path == path) and (method is None or
                                                                r.method == method))

    def recs(self):
        with self.lock:
            return list(self.requests)

    def last(self):
        with self.lock:
            assert self.requests, f"origin {self.name} received no request"
            return self.requests[-1]

    def clear(self):
        with self.lock:
            self.requests.clear()
            self.health_hits = 0

    def refuse(self):
        """Stop listening and drop every open connection: connects are refused."""
        ls = self._lsock
        self._lsock = None
        if self._accept_thread:
            self._accept_thread.join(timeout=5)
            self._accept_thread = None
        if ls:
            ls.close()
        self._drop_conns()

    def resume(self):
        assert self._lsock is None
        self._listen()

    def stop(self):
        self._stopped.set()
        self.refuse()

    # -- server ---------------------------------------------------------
    def _listen(self):
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 5
        while True:
            try:
                ls.bind(("127.0.0.1", self.port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        ls.listen(512)
        ls.settimeout(0.05)
        self.port = ls.getsockname()[1]
        self._lsock = ls
        self._accept_thread = threading.Thread(target=self._accept_loop, args=(ls,),
                                               name=f"origin-{self.name}", daemon=True)
        self._accept_thread.start()

    def _accept_loop(self, ls):
        while self._lsock is ls and not self._stopped.is_set():
            try:
                c, _ = ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            c.settimeout(30.0)
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                cid = self._next_conn
                self._next_conn += 1
                self._conns[cid] = c
            threading.Thread(target=self._serve, args=(c, cid), daemon=True).start()

    def _drop_conns(self):
        with self.lock:
            conns = list(self._conns.values())
            self._conns.clear()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _serve(self, c, cid):
        try:
            self._serve_loop(c, cid)
        except OSError:
            pass
        finally:
            with self.lock:
                self._conns.pop(cid, None)
            try:
                c.close()
            except OSError:
                pass

    def _read_request(self, rd, cid):
        head = rd.until(b"\r\n\r\n")
        if head is None:
            return None
        lines = head[:-4].decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ", 2)
        headers = []
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            headers.append((k.strip(), v.strip()))
        hd = {k.lower(): v for k, v in headers}
        body = b""
        if hd.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                line = rd.until(b"\r\n")
                if line is None:
                    return None
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while True:
                        t = rd.until(b"\r\n")
                        if t is None or t == b"\r\n":
                            break
                    break
                chunk = rd.exact(size + 2)
                if chunk is None:
                    return None
                parts.append(chunk[:-2])
            body = b"".join(parts)
        elif "content-length" in hd:
            body = rd.exact(int(hd["content-length"]))
            if body is None:
                return None
        return Rec(method, target, version, headers, body, cid)

    def _serve_loop(self, c, cid):
        rd = _ConnReader(c)
        while not self._stopped.is_set():
            rec = self._read_request(rd, cid)
            if rec is None:
                return
            keep = (rec.version == "HTTP/1.1" and
                    "close" not in (rec.header("Connection") or "").lower())
            if rec.path == HEALTH_PATH:
                with self.lock:
                    self.health_hits += 1
                    st = self.health_status
                self._respond(c, rec, st, b'{"health":"%d"}' % st, keep)
                if not keep:
                    return
                continue
            with self.lock:
                self.requests.append(rec)
                mode, status, delay = self.mode, self.status, self.delay_ms
            if mode == "reset":
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            if mode == "close":
                return
            if mode == "hang":
                c.settimeout(0.1)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and not self._stopped.is_set():
                    try:
                        if not c.recv(65536):
                            return
                    except socket.timeout:
                        continue
                return
            if mode == "sleep":
                time.sleep(delay / 1000.0)
            if rec.path in ("/big", "/chunked", "/eof", "/trunc"):
                if not self._send_stream(c, rec, keep):
                    return
            elif rec.path.startswith("/status/"):
                st = int(rec.path[len("/status/"):])
                if st in (204, 304):
                    self._respond_no_body(c, st, keep)
                else:
                    self._respond(c, rec, st, b'{"status": %d}' % st, keep)
            else:
                body = json.dumps({"origin": self.name, "method": rec.method,
                                   "target": rec.target, "len": len(rec.body)}).encode()
                self._respond(c, rec, status, body, keep)
            if not keep:
                return

    def _respond_no_body(self, c, status, keep):
        h = [f"HTTP/1.1 {status} Status", f"X-Origin: {self.name}"]
        if not keep:
            h.append("Connection: close")
        c.sendall(("\r\n".join(h) + "\r\n\r\n").encode("latin-1"))

    def _respond(self, c, rec, status, body, keep, ctype="application/json"):
        h = [f"HTTP/1.1 {status} {'OK' if status == 200 else 'Status'}",
             f"Content-Type: {ctype}", f"Content-Length: {len(body)}",
             f"X-Origin: {self.name}"]
        for k, v in self.extra_headers:
            h.append(f"{k}: {v}")
        if not keep:
            h.append("Connection: close")
        data = ("\r\n".join(h) + "\r\n\r\n").encode("latin-1")
        if rec.method != "HEAD":
            data += body
        c.sendall(data)

    def _send_stream(self, c, rec, keep):
        """/big?n=N: Content-Length; /chunked?n=N: chunked; /eof?n=N: no
        length, close-delimited; /trunc?n=N&cut=M: announces N, sends M,
        closes. The bytes are the weftutil /bytes pattern. Returns whether
        the connection may stay open."""
        q = dict(p.split("=", 1) for p in rec.query.split("&") if "=" in p)
        n = int(q.get("n", "0"))
        kind = rec.path[1:]
        h = ["HTTP/1.1 200 OK", "Content-Type: application/octet-stream",
             f"X-Origin: {self.name}"]
        if kind in ("big", "trunc"):
            h.append(f"Content-Length: {n}")
        elif kind == "chunked":
            h.append("Transfer-Encoding: chunked")
        if kind == "eof" or not keep:
            h.append("Connection: close")
        c.sendall(("\r\n".join(h) + "\r\n\r\n").encode("latin-1"))
        if rec.method == "HEAD":
            return kind != "eof" and keep
        send = int(q.get("cut", n)) if kind == "trunc" else n
        blk = pattern_block() * 8
        left = send
        while left > 0:
            k = min(left, len(blk))
            if kind == "chunked":
                c.sendall(b"%x\r\n" % k + blk[:k] + b"\r\n")
            else:
                c.sendall(blk[:k])
            left -= k
        if kind == "chunked":
            c.sendall(b"0\r\n\r\n")
        if kind == "trunc":
            time.sleep(0.05)
        return kind in ("big", "chunked") and keep


# ====================================================================== nginx

class Nginx:
    """Real nginx as an origin: `return 200` on every path."""

    def __init__(self, workdir, body="nginx-ok\n"):
        self.dir = Path(workdir) / f"nginx-{id(self)}"
        self.dir.mkdir(parents=True)
        for d in ("logs", "tmp"):
            (self.dir / d).mkdir()
        self.proc = None
        last_err = ""
        nbody = body.replace("\n", "\\n")
        for _ in range(5):
            self.port = weftutil.free_port()
            conf = self.dir / "nginx.conf"
            conf.write_text(f"""
daemon off;
master_process on;
worker_processes 1;
pid {self.dir}/nginx.pid;
error_log {self.dir}/logs/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {self.dir}/tmp/body;
    proxy_temp_path {self.dir}/tmp/proxy;
    fastcgi_temp_path {self.dir}/tmp/fastcgi;
    uwsgi_temp_path {self.dir}/tmp/uwsgi;
    scgi_temp_path {self.dir}/tmp/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    server {{
        listen 127.0.0.1:{self.port} reuseport;
        location / {{ default_type text/plain; return 200 "{nbody}"; }}
    }}
}}
""")
            self._err = open(self.dir / "stderr.log", "wb")
            self.proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(self.dir)],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=self._err)
            deadline = time.monotonic() + 10
            ok = False
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                    ok = True
                    break
                except OSError:
                    time.sleep(0.02)
            if ok:
                return
            self.stop()
            last_err = (self.dir / "stderr.log").read_text() + \
                (self.dir / "logs" / "error.log").read_text()
        raise RuntimeError(f"nginx did not start: {last_err}")

    @property
    def addr(self):
        return f"127.0.0.1:{self.port}"

    def stop(self):
        if self.proc:
            weftutil.stop_process(self.proc, signal.SIGQUIT)
        self._err.close()


# ====================================================================== client

def build_request(method, target, headers=None, body=b""):
    hs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    if not any(k.lower() == "host" for k, _ in hs):
        hs.insert(0, ("Host", "127.0.0.1"))
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in hs):
        hs.append(("Content-Length", str(len(body))))
    elif method in ("POST", "PUT", "PATCH") and not body and \
            not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in hs):
        hs.append(("Content-Length", "0"))
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hs) + "\r\n"
    return head.encode("latin-1") + body


class Client:
    """Keep-alive HTTP/1.1 client over one socket (reconnects only when the
    server announced or performed a close after a complete response)."""

    def __init__(self, port, timeout=10.0, source_ip=None):
        self.port = port
        self.timeout = timeout
        self.source_ip = source_ip
        self.sock = None
        self.rd = None

    def _connect(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        if self.source_ip:
            s.bind((self.source_ip, 0))
        s.connect(("127.0.0.1", self.port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = s
        self.rd = Reader(s)

    def request(self, method, target, headers=None, body=b""):
        if self.sock is None:
            self._connect()
        t0 = time.monotonic()
        self.sock.sendall(build_request(method, target, headers, body))
        r = self.rd.read_response(method=method)
        r.elapsed = time.monotonic() - t0
        if (r.header("Connection") or "").lower() == "close" or self.rd.eof:
            self.close()
        return r

    def get(self, target, headers=None):
        return self.request("GET", target, headers)

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            self.rd = None

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def origin_of(resp):
    """Name of the origin that produced a proxied response (X-Origin)."""
    return resp.header("X-Origin")


def parallel(port, n, concurrency=16, method="GET", target="/", headers=None, body=b"",
             timeout=10.0):
    """Send n requests over `concurrency` keep-alive connections; returns
    the responses in completion order. Any transport error is raised."""
    local = threading.local()
    clients = []
    lock = threading.Lock()

    def one(i):
        c = getattr(local, "c", None)
        if c is None:
            c = local.c = Client(port, timeout=timeout)
            with lock:
                clients.append(c)
        h = headers(i) if callable(headers) else headers
        t = target(i) if callable(target) else target
        return c.request(method, t, h, body)

    try:
        with concurrent.futures.ThreadPoolExecutor(concurrency) as ex:
            return list(ex.map(one, range(n)))
    finally:
        for c in clients:
            c.close()


def sequential(port, n, method="GET", target="/", headers=None, body=b""):
    with Client(port) as c:
        return [c.request(method, target(i) if callable(target) else target,
                          headers(i) if callable(headers) else headers, body)
                for i in range(n)]


# ====================================================================== metrics

_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def metric(m, name, default=0.0, **labels):
    """Value of the sample `name` whose labels include `labels` (summed over
    the rest) from a parse_metrics() dict."""
    total = None
    for (n, lbl), v in m.items():
        if n != name:
            continue
        have = dict(_LABEL_RE.findall(lbl or ""))
        if all(have.get(k) == str(val) for k, val in labels.items()):
            total = (total or 0.0) + v
    return default if total is None else total


# ====================================================================== gateway

class Gateway(Proc):
    """A running `weft gateway -c FILE --listen 127.0.0.1:0 --admin 127.0.0.1:0`
    (see svcutil.Proc), started once the admin listener serves /health."""

    start_timeout = 15.0
    stop_timeout = 20.0

    def __init__(self, config_text, workdir, workers=1, log_format=None, extra_args=()):
        self.config_path = Path(workdir) / f"gateway-{id(self)}.yaml"
        self.write_config(config_text)
        argv = [WEFT_BIN, "gateway", "-c", self.config_path, "--listen", "127.0.0.1:0",
                "--admin", "127.0.0.1:0"]
        if workers is not None:
            argv += ["--workers", str(workers)]
        if log_format:
            argv += ["--log-format", log_format]
        super().__init__([*argv, *extra_args], workdir, "gateway", also=("gateway-admin",))

    @property
    def admin_port(self):
        return self.port_of("gateway-admin")

    def ready(self):
        return self.admin_get("/health", timeout=1.0).status == 200

    # -- config ----------------------------------------------------------
    def write_config(self, text):
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config_path)

    # -- requests --------------------------------------------------------
    def client(self, **kw):
        return Client(self.port, **kw)

    def request(self, method, target, headers=None, body=b"", timeout=10.0):
        with Client(self.port, timeout=timeout) as c:
            return c.request(method, target, headers, body)

    def get(self, target, headers=None, timeout=10.0):
        return self.request("GET", target, headers, timeout=timeout)

    def admin_get(self, path, timeout=5.0):
        with Client(self.admin_port, timeout=timeout) as c:
            return c.request("GET", path, [("Connection", "close")])

    def admin_post(self, path, timeout=10.0):
        with Client(self.admin_port, timeout=timeout) as c:
            return c.request("POST", path, [("Connection", "close")])

    def reload(self):
        return self.admin_post("/admin/reload")

    def metrics_text(self):
        r = self.admin_get("/metrics")
        assert r.status == 200, r
        return r.body.decode()

    def metrics(self):
        return parse_metrics(self.metrics_text())

    def clusters(self):
        r = self.admin_get("/admin/clusters")
        assert r.status == 200, r
        return r.json()

    def cluster(self, name):
        for c in self.clusters()["clusters"]:
            if c["name"] == name:
                return c
        raise AssertionError(f"no cluster {name} in /admin/clusters")

    def endpoint(self, cluster, addr):
        for e in self.cluster(cluster)["endpoints"]:
            if e["address"] == addr:
                return e
        raise AssertionError(f"no endpoint {addr} in cluster {cluster}")

    # -- process ---------------------------------------------------------
    def json_lines(self, msg=None):
        out = []
        for line in self.stderr.splitlines():
            if not line.startswith("{"):
                continue
            try:
                o = json.loads(line)
            except ValueError:
                raise AssertionError(f"malformed JSON log line: {line!r}")
            if msg is None or o.get("msg") == msg:
                out.append(o)
        return out


class _GatewayFactory:
    def __init__(self, tmpdir):
        self.tmpdir = tmpdir
        self.started = []

    def __call__(self, config_text, workers=1, log_format=None, extra_args=()):
        g = Gateway(config_text, self.tmpdir, workers=workers, log_format=log_format,
                    extra_args=extra_args)
        self.started.append(g)
        return g

    def teardown(self):
        stop_all(self.started)


@pytest.fixture
def gateway(tmp_path):
    """gateway(config_yaml, workers=1, log_format=None) -> Gateway; each is
    SIGTERMed at teardown and must exit 0 without a sanitizer report."""
    f = _GatewayFactory(str(tmp_path))
    yield f
    f.teardown()


@pytest.fixture
def origins():
    """origins(n) -> [Origin] named o0..o{n-1} (o<k> continues across calls)."""
    made = []

    def make(n=1, names=None):
        names = names or [f"o{len(made) + i}" for i in range(n)]
        new = [Origin(nm) for nm in names]
        made.extend(new)
        return new

    yield make
    for o in made:
        o.stop()


@pytest.fixture
def nginx_origin(tmp_path):
    made = []

    def make(body="nginx-ok\n"):
        n = Nginx(tmp_path, body)
        made.append(n)
        return n

    yield make
    for n in made:
        n.stop()


# ====================================================================== YAML

def eps_yaml(origins_or_addrs, weights=None):
    """Flow list of endpoints for a cluster."""
    addrs = [o if isinstance(o, str) else o.addr for o in origins_or_addrs]
    if weights:
        return "[" + ", ".join(f"{{address: {a}, weight: {w}}}"
                               for a, w in zip(addrs, weights)) + "]"
    return "[" + ", ".join(addrs) + "]"


def closed_port():
    """A loopback port with nothing listening on it (connect is refused)."""
    return weftutil.free_port()


class Blackhole:
    """A loopback address whose connects hang: a listener with backlog 0
    that never accepts, its accept queue already full, so the kernel drops
    further SYNs (connect neither succeeds nor is refused)."""

    def __init__(self):
        self.ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(0)
        self.port = self.ls.getsockname()[1]
        self.fill = []
        for _ in range(16):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(0.3)
            try:
                s.connect(("127.0.0.1", self.port))
            except socket.timeout:
                s.close()
                return
            self.fill.append(s)
        raise RuntimeError("could not fill the accept queue")

    @property
    def addr(self):
        return f"127.0.0.1:{self.port}"

    def close(self):
        for s in self.fill:
            s.close()
        self.ls.close()


@pytest.fixture
def blackhole():
    b = Blackhole()
    yield b
    b.close()


def sha256(b):
    return hashlib.sha256(b).hexdigest()
