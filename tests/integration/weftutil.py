"""Shared helpers for the weft integration tests: starting the real binary,
raw-socket HTTP/1.1 exchange, server-sent events and Prometheus text parsing.

Everything here is bounded in time: sockets carry timeouts and every wait
has a deadline.
"""
import json
import random
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

from svcutil import WEFT_BIN, Proc, sanitizer_env


def run_weft(*args, timeout=20, env=None):
    """Run a short weft command; return CompletedProcess (text)."""
    return subprocess.run([WEFT_BIN, *args], capture_output=True, text=True, timeout=timeout,
                          env=env or sanitizer_env())


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def port_outside_ephemeral():
    """A free loopback port outside the kernel's ephemeral range. A client
    that keeps reconnecting to a closed port inside that range will, sooner
    or later, be given that very port as its source and connect to itself
    (TCP simultaneous open): it then reads its own request back. Tests that
    hammer a server through its shutdown listen outside the range."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        lo, hi = map(int, f.read().split())
    ranges = [(max(1024, lo // 2), lo - 1)] if lo > 2048 else [(hi + 1, 65535)]
    rng = random.Random()
    for _ in range(200):
        a, b = ranges[0]
        port = rng.randint(a, b)
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            s.close()
        return port
    raise RuntimeError("no free port outside the ephemeral range")


class Weft(Proc):
    """A running `weft hello` process (see svcutil.Proc); addresses: every
    listener's (host, port)."""

    stop_timeout = 20.0

    def __init__(self, args, workdir, expect_listen_line=True, port=None, extra_env=None):
        super().__init__([WEFT_BIN, "hello", *args], workdir,
                         "hello" if expect_listen_line else None, name="weft", env=extra_env,
                         port=port)
        self.addresses = [(h, p) for s, h, p in self.listening if s == "hello"]

    def ready(self):
        # The listening line is logged before the workers (and the signal
        # mask) are set up: wait until a request is actually served so a
        # signal sent by a test is handled by the runtime, not by default.
        return simple_request(self.port, "GET", "/health", timeout=1.0)[0] == 200


# ---------------------------------------------------------------- raw HTTP

def connect(port, timeout=5.0, host="127.0.0.1"):
    s = socket.create_connection((host, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


class Response:
    def __init__(self, version, status, reason, headers, body, raw_head):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers  # list of (name, value) in order
        self.body = body
        self.raw_head = raw_head

    @property
    def status_line(self):
        return f"{self.version} {self.status} {self.reason}"

    def header(self, name, default=None):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return default

    def header_all(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<Response {self.status_line} headers={self.headers} body={self.body[:200]!r}>"


class Reader:
    """Buffered reader over a socket for parsing HTTP/1.1 responses."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()
        self.eof = False
        self.last_head = None

    def _fill(self):
        if self.eof:
            return False
        data = self.sock.recv(65536)
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def read_until(self, sep, limit=1 << 20):
        while True:
            i = self.buf.find(sep)
            if i >= 0:
                out = bytes(self.buf[:i + len(sep)])
                del self.buf[:i + len(sep)]
                return out
            if len(self.buf) > limit:
                raise ValueError("line too long")
            if not self._fill():
                raise EOFError(f"EOF before {sep!r}; have {bytes(self.buf[:200])!r}")

    def read_exact(self, n):
        while len(self.buf) < n:
            if not self._fill():
                raise EOFError(f"EOF after {len(self.buf)} of {n} bytes")
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_to_eof(self):
        while self._fill():
            pass
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def read_head(self):
        raw = self.read_until(b"\r\n\r\n")
        self.last_head = raw
        lines = raw[:-4].split(b"\r\n")
        sl = lines[0].decode("latin-1")
        parts = sl.split(" ", 2)
        version, status = parts[0], int(parts[1])
        reason = parts[2] if len(parts) > 2 else ""
        headers = []
        for ln in lines[1:]:
            k, _, v = ln.decode("latin-1").partition(":")
            headers.append((k, v.strip()))
        return version, status, reason, headers, raw

    def read_chunked(self):
        out = bytearray()
        while True:
            line = self.read_until(b"\r\n")
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                # trailers until the empty line
                while self.read_until(b"\r\n") != b"\r\n":
                    pass
                return bytes(out)
            out += self.read_exact(size)
            if self.read_exact(2) != b"\r\n":
                raise ValueError("chunk not followed by CRLF")

    def read_response(self, method="GET", allow_100=False):
        """Read one complete response. 1xx interim responses are skipped
        unless allow_100 is set (then the 100 itself is returned)."""
        while True:
            version, status, reason, headers, raw = self.read_head()
            if 100 <= status < 200 and not allow_100:
                continue
            break
        r = Response(version, status, reason, headers, b"", raw)
        if method == "HEAD" or status < 200 or status in (204, 304):
            return r
        te = r.header("Transfer-Encoding")
        cl = r.header("Content-Length")
        if te is not None:
            assert te.lower() == "chunked", te
            r.body = self.read_chunked()
        elif cl is not None:
            r.body = self.read_exact(int(cl))
        else:
            r.body = self.read_to_eof()
        return r

    def at_eof(self, timeout=3.0):
        """True if the peer closed (FIN) with no further bytes within timeout.
        Raises AssertionError if unexpected bytes arrive."""
        if self.buf:
            raise AssertionError(f"unexpected extra bytes: {bytes(self.buf[:200])!r}")
        old = self.sock.gettimeout()
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return False
        finally:
            self.sock.settimeout(old)
        if data:
            raise AssertionError(f"unexpected extra bytes: {data[:200]!r}")
        self.eof = True
        return True


def request_bytes(method, target, headers=None, body=b"", version="HTTP/1.1", host=True):
    h = []
    if host:
        h.append("Host: 127.0.0.1")
    for k, v in (headers or {}).items() if isinstance(headers, dict) else (headers or []):
        h.append(f"{k}: {v}")
    if body and not any(x.lower().startswith(("content-length:", "transfer-encoding:"))
                        for x in h):
        h.append(f"Content-Length: {len(body)}")
    head = f"{method} {target} {version}\r\n" + "".join(x + "\r\n" for x in h) + "\r\n"
    return head.encode("latin-1") + body


def exchange(port, raw, timeout=5.0, method="GET"):
    """Send raw bytes on a fresh connection and read one response.
    Returns (Response, Reader) so callers can continue reading."""
    s = connect(port, timeout)
    s.sendall(raw)
    rd = Reader(s)
    return rd.read_response(method=method), rd


def simple_request(port, method, target, headers=None, body=b"", timeout=5.0):
    s = connect(port, timeout)
    try:
        s.sendall(request_bytes(method, target, headers, body))
        r = Reader(s).read_response(method=method)
        return r.status, r.headers, r.body
    finally:
        s.close()


def get(port, target, timeout=5.0):
    s = connect(port, timeout)
    try:
        s.sendall(request_bytes("GET", target, [("Connection", "close")]))
        return Reader(s).read_response()
    finally:
        s.close()


LINGER_RST = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # struct linger {1, 0}


class SSE:
    """A raw-socket server-sent-event client: GET target (with extra
    headers), then events as they come, chunked or not. status, resp (the
    body read too when the status is not 200), head (lowercased)."""

    def __init__(self, port, target, timeout=10.0, rcvbuf=None, headers=None):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.settimeout(timeout)
        s.connect(("127.0.0.1", port))
        self.sock = s
        s.sendall(request_bytes("GET", target, headers))
        self.rd = Reader(s)
        version, status, reason, hdrs, raw = self.rd.read_head()
        self.resp = Response(version, status, reason, hdrs, b"", raw)
        self.status = status
        self.head = raw.decode("latin-1").lower()
        self.text = bytearray()
        self.comments = []
        self.ended = False  # terminal chunk seen
        self.chunked = (self.resp.header("Transfer-Encoding") or "").lower() == "chunked"
        if status != 200:
            cl = self.resp.header("Content-Length")
            self.resp.body = self.rd.read_exact(int(cl)) if cl else self.rd.read_to_eof()
            self.ended = True

    def settimeout(self, t):
        self.sock.settimeout(t)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def reset(self):
        """Close with an RST (SO_LINGER 0): the server sees the error at once."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
            self.sock.close()
        except OSError:
            pass

    def _more(self):
        if self.ended:
            return False
        if self.chunked:
            line = self.rd.read_until(b"\r\n")
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                while self.rd.read_until(b"\r\n") != b"\r\n":
                    pass
                self.ended = True
                return False
            self.text += self.rd.read_exact(size)
            assert self.rd.read_exact(2) == b"\r\n"
            return True
        if not self.rd.buf and not self.rd._fill():
            self.ended = True
            return False
        self.text += self.rd.buf
        self.rd.buf.clear()
        return True

    def next_block(self):
        while True:
            i = self.text.find(b"\n\n")
            if i >= 0:
                blk = bytes(self.text[:i])
                del self.text[:i + 2]
                return blk.decode()
            if not self._more():
                assert not self.text, f"stream ended inside an event: {bytes(self.text)[:200]!r}"
                return None

    def next_event(self):
        """The next event as a dict (id, event, data, json), or None at end."""
        while True:
            blk = self.next_block()
            if blk is None:
                return None
            ev = {}
            for line in blk.split("\n"):
                if line.startswith(":"):
                    self.comments.append(line)
                    continue
                k, _, v = line.partition(":")
                v = v[1:] if v.startswith(" ") else v
                if k == "data" and "data" in ev:
                    ev["data"] += "\n" + v
                else:
                    ev[k] = v
            if not ev:
                continue  # comment-only block (greeting, ping)
            if "id" in ev:
                ev["id"] = int(ev["id"])
            if "data" in ev:
                ev["json"] = json.loads(ev["data"])
            return ev

    def events(self, n, timeout=None):
        """The next n events (EOFError if the stream ends first); with a
        timeout, all of them within that many seconds (else TimeoutError)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        out = []
        while len(out) < n:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(out)} of {n} events within {timeout}s")
                self.sock.settimeout(max(0.05, left))
            ev = self.next_event()
            if ev is None:
                raise EOFError(f"stream ended after {len(out)} of {n} events")
            out.append(ev)
        return out

    def pairs(self, n, timeout=10):
        """The next n events as (id, parsed data), all within timeout seconds."""
        return [(e["id"], e["json"]) for e in self.events(n, timeout)]

    def read_greeting(self):
        blk = self.next_block()
        assert blk == ": weft registry watch", blk


# ---------------------------------------------------------------- metrics

SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$')


def parse_metrics(text):
    """{(name, labels_str): float} for every sample line."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE_RE.match(line)
        assert m, f"unparseable sample line: {line!r}"
        out[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return out


def scrape(port, reader=None):
    """GET /metrics; on a given keep-alive Reader if passed, else a fresh one."""
    if reader is None:
        r = get(port, "/metrics")
    else:
        reader.sock.sendall(request_bytes("GET", "/metrics"))
        r = reader.read_response()
    assert r.status == 200, r
    return parse_metrics(r.body.decode())


# ---------------------------------------------------------------- /bytes pattern

def bytes_pattern_block():
    """A whole number of periods of the /bytes stream, whose byte i is
    'a' + i % 26 (see bytes_pump in src/cmd/cmd_hello.c)."""
    return bytes(ord("a") + i % 26 for i in range(26 * 630))


def expected_bytes(n):
    blk = bytes_pattern_block()
    reps, rem = divmod(n, len(blk))
    return blk * reps + blk[:rem]


def expected_bytes_sha256(n):
    import hashlib
    blk = bytes_pattern_block()
    big = blk * 64
    h = hashlib.sha256()
    left = n
    while left >= len(big):
        h.update(big)
        left -= len(big)
    while left >= len(blk):
        h.update(blk)
        left -= len(blk)
    h.update(blk[:left])
    return h.hexdigest()


class Prometheus:
    """Debian's real Prometheus server on loopback, scraping with the given
    `scrape_configs:` YAML (already indented under it). The config is
    checked with promtool first; stop() ends the server within a bound."""

    def __init__(self, tmp_path, scrape_configs):
        tmp_path = Path(tmp_path)
        self.port = free_port()
        cfg = tmp_path / "prom.yml"
        cfg.write_text("global:\n  scrape_interval: 1s\nscrape_configs:\n" + scrape_configs)
        chk = subprocess.run(["promtool", "check", "config", str(cfg)], capture_output=True,
                             text=True, timeout=30)
        assert chk.returncode == 0, chk.stdout + chk.stderr
        self.log_path = tmp_path / "prom.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(["prometheus", f"--config.file={cfg}",
                                      f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                      f"--web.listen-address=127.0.0.1:{self.port}"],
                                     stdout=subprocess.DEVNULL, stderr=self._log)

    def api(self, path):
        """The "data" of GET /api/v1/<path>, or None while it is not serving."""
        import urllib.request
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v1/{path}",
                                        timeout=2) as f:
                return json.load(f)["data"]
        except OSError:
            return None

    def targets(self, job):
        """The job's active targets (ordered by instance), or None."""
        d = self.api("targets")
        if d is None:
            return None
        return sorted((t for t in d["activeTargets"] if t["labels"].get("job") == job),
                      key=lambda t: t["labels"]["instance"])

    def log_tail(self, n=3000):
        return self.log_path.read_text()[-n:]

    def stop(self):
        stop_process(self.proc)
        self._log.close()


def stop_process(proc, sig=signal.SIGTERM, timeout=10.0):
    """Signal a helper process (if still running) and reap it; SIGKILL if it
    has not exited within `timeout`."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
