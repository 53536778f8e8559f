"""Start, talk to and stop the real processes of a Weft system: weft
registry, the example services built on the SDK (examples/services), weft
gateway. Every wait is bounded; stop() fails the test on a sanitizer report
or an unclean exit."""
import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

from gwutil import wait_until  # noqa: F401  (re-exported for the tests)

REPO = Path(__file__).resolve().parents[2]
WEFT_BIN = os.environ.get("WEFT_BIN", str(REPO / "build" / "asan" / "weft"))
BIN_DIR = Path(WEFT_BIN).resolve().parent

LISTEN_RE = re.compile(r"msg=listening (?:.*?)service=(\S+) (?:.*?)addr=(\S+):(\d+)")


def http(port, method, path, body=None, headers=None, timeout=5.0):
    """One request on a fresh connection: (status, headers dict, body bytes)."""
    data = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None
                                                  else b"")
    h = {"Host": "t", "Content-Length": str(len(data)), "Connection": "close", **(headers or {})}
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall((f"{method} {path} HTTP/1.1\r\n" +
                   "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n").encode() + data)
        resp = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            resp += d
    finally:
        s.close()
    head, _, payload = resp.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    hdrs = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    if hdrs.get("transfer-encoding") == "chunked":
        out, rest = b"", payload
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size, 16)
            if n == 0:
                break
            out, rest = out + rest[:n], rest[n + 2:]
        payload = out
    return int(lines[0].split()[1]), hdrs, payload


def get_json(port, path, headers=None, timeout=5.0):
    st, _, b = http(port, "GET", path, headers=headers, timeout=timeout)
    return st, (json.loads(b) if b else None)


class Proc:
    """A process that logs `msg=listening service=NAME addr=HOST:PORT`."""

    def __init__(self, argv, workdir, service, name=None):
        self.argv = [str(a) for a in argv]
        self.service = service
        self.log = Path(workdir) / f"{name or service}-{time.monotonic_ns()}.log"
        self._err = open(self.log, "wb")
        env = dict(os.environ)
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self._err, env=env)
        self.pid = self.proc.pid
        self.port = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.port is None:
            for m in LISTEN_RE.finditer(self.text()):
                if m.group(1) == service:
                    self.port = int(m.group(3))
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.argv[0]} exited early ({self.proc.returncode}):\n"
                                   f"{self.text()}")
            time.sleep(0.02)
        if self.port is None:
            self.kill()
            raise RuntimeError(f"{self.argv} did not start:\n{self.text()}")
        self.addr = f"127.0.0.1:{self.port}"

    def text(self):
        return self.log.read_text(errors="replace")

    def alive(self):
        return self.proc.poll() is None

    def signal(self, sig):
        self.proc.send_signal(sig)

    def kill(self):
        if self.alive():
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._err.close()

    def stop(self, timeout=15):
        """SIGTERM, expect exit 0 and no sanitizer report."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=timeout)
        self._err.close()
        text = self.text()
        for marker in ("Sanitizer", "runtime error:"):
            assert marker not in text, f"{self.argv[0]}: {marker}\n{text[-4000:]}"
        assert rc == 0, f"{self.argv} exited {rc}:\n{text[-3000:]}"
        return rc


def registry(workdir, *extra):
    return Proc([WEFT_BIN, "registry", "--listen", "127.0.0.1:0", *extra], workdir, "registry")


def example(name, workdir, registry_port, *extra):
    """One of the example services (examples/services/NAME.c)."""
    return Proc([BIN_DIR / f"weft-example-{name}", "--listen", "127.0.0.1:0", "--registry",
                 f"http://127.0.0.1:{registry_port}", *extra], workdir, name)


def instances(reg, service):
    st, d = get_json(reg.port, f"/v1/services/{service}")
    assert st == 200, d
    return {i["id"]: i for i in d["instances"]}


def metric(port, name, **labels):
    _, _, text = http(port, "GET", "/metrics")
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    total = 0.0
    for ln in text.decode().splitlines():
        if ln.startswith(name + "{" if labels else name) and (not labels or want in ln):
            total += float(ln.rsplit(" ", 1)[1])
    return total


class Registry(Proc):
    """A running `weft registry` (extra flags such as --data DIR), served
    once /health answers."""

    def __init__(self, workdir, *extra, port=0):
        super().__init__([WEFT_BIN, "registry", "--listen", f"127.0.0.1:{port}", *extra],
                         workdir, "registry")
        wait_until(lambda: self._healthy(), timeout=10, what="registry serving")

    def _healthy(self):
        try:
            return http(self.port, "GET", "/health", timeout=1)[0] == 200
        except OSError:
            return False

    def req(self, method, path, body=None):
        """(status, parsed JSON body or None)."""
        st, _, b = http(self.port, method, path, body=body)
        try:
            return st, (json.loads(b) if b else None)
        except ValueError:
            return st, None

    def put(self, service, iid, body):
        return self.req("PUT", f"/v1/services/{service}/instances/{iid}", body)[0]

    def delete(self, service, iid):
        return self.req("DELETE", f"/v1/services/{service}/instances/{iid}")[0]

    def instances(self, service):
        st, d = self.req("GET", f"/v1/services/{service}")
        assert st == 200, d
        return d

    kill9 = Proc.kill  # SIGKILL, the spelling the registry tests use
