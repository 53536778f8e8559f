"""Shared helpers for the weft integration tests: starting the real binary,
raw-socket HTTP/1.1 exchange and Prometheus text parsing.

Everything here is bounded in time: sockets carry timeouts and every wait
has a deadline.
"""
import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WEFT_BIN = os.environ.get("WEFT_BIN", str(REPO / "build" / "asan" / "weft"))

SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer",
                     "WARNING: ThreadSanitizer")

LISTEN_RE_TEXT = re.compile(r"msg=listening .*?addr=(\S+):(\d+)")

DEFAULT_TIMEOUT = 10.0


def sanitizer_env():
    env = dict(os.environ)
    # abort_on_error=0 keeps the report on stderr and a non-zero exit code;
    # detect_leaks stays on so a leak fails the exit-code check.
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
    return env


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


class Weft:
    """A running `weft hello` process."""

    def __init__(self, args, workdir, expect_listen_line=True, port=None, json_log=False,
                 extra_env=None):
        self.args = list(args)
        self.workdir = Path(workdir)
        self.stderr_path = self.workdir / f"weft-stderr-{os.getpid()}-{id(self)}.log"
        self._errf = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen([WEFT_BIN, "hello", *self.args], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self._errf,
                                     env={**sanitizer_env(), **(extra_env or {})})
        self.pid = self.proc.pid
        self.host = "127.0.0.1"
        self.port = port
        self.returncode = None
        self.addresses = []
        deadline = time.monotonic() + DEFAULT_TIMEOUT
        if expect_listen_line:
            while time.monotonic() < deadline:
                self.addresses = self._listen_addrs(json_log)
                if self.addresses:
                    break
                if self.proc.poll() is not None:
                    raise RuntimeError(f"weft exited early ({self.proc.returncode}):\n"
                                       f"{self.stderr}")
                time.sleep(0.02)
            else:
                self.kill()
                raise RuntimeError(f"no listening line within {DEFAULT_TIMEOUT}s:\n{self.stderr}")
            self.host, self.port = self.addresses[0]
        assert self.port, "port unknown"
        # The listening line is logged before the workers (and the signal
        # mask) are set up: wait until a request is actually served so a
        # signal sent by a test is handled by the runtime, not by default.
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weft exited early ({self.proc.returncode}):\n{self.stderr}")
            try:
                st, _, _ = simple_request(self.port, "GET", "/health", timeout=1.0)
                if st == 200:
                    break
            except OSError:
                pass
            time.sleep(0.02)
        else:
            self.kill()
            raise RuntimeError(f"weft not serving within {DEFAULT_TIMEOUT}s:\n{self.stderr}")

    def _listen_addrs(self, json_log):
        out = []
        for line in self.stderr.splitlines():
            if json_log:
                try:
                    o = json.loads(line)
                except ValueError:
                    continue
                if o.get("msg") == "listening":
                    h, p = o["addr"].rsplit(":", 1)
                    out.append((h, int(p)))
            else:
                m = LISTEN_RE_TEXT.search(line)
                if m:
                    out.append((m.group(1), int(m.group(2))))
        return out

    @property
    def url(self):
        return f"http://{self.host}:{self.port}"

    @property
    def stderr(self):
        try:
            return self.stderr_path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def rss_kib(self):
        """VmRSS of the server in KiB (None once it has exited)."""
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            return None
        return None

    def send_signal(self, sig):
        if self.proc.poll() is None:
            os.kill(self.pid, sig)

    def wait(self, timeout):
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        self._errf.close()
        return self.returncode

    def stop(self, sig=signal.SIGTERM, timeout=20.0):
        """Signal and wait; returns the exit code (kills and fails on hang)."""
        if self.proc.poll() is None:
            os.kill(self.pid, sig)
        rc = self.wait(timeout)
        if rc is None:
            self.kill()
            raise AssertionError(f"weft did not exit within {timeout}s after {sig!r}:\n"
                                 f"{self.stderr[-4000:]}")
        return rc

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self._errf.close()

    def sanitizer_report(self):
        err = self.stderr
        for m in SANITIZER_MARKERS:
            if m in err:
                return err
        return None

    def check_clean_exit(self, timeout=20.0):
        if self.proc.poll() is None:
            self.stop(timeout=timeout)
        rc = self.proc.returncode
        rep = self.sanitizer_report()
        assert rep is None, f"sanitizer report in weft stderr:\n{rep[-6000:]}"
        assert rc == 0, f"weft exited with {rc}:\n{self.stderr[-4000:]}"


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
