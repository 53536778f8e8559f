"""Helpers for the `weft log` tests: start the broker, speak raw Kafka
frames for the bad-input cases, run client programs in subprocesses."""
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from svcutil import WEFT_BIN, Proc


class Log(Proc):
    """A running `weft log` on a free loopback port; with http=True also the
    streams API (`--http`) on another one: http_port and url."""

    def __init__(self, workdir, data=None, extra=(), name="log", http=False, port=0, env=None):
        self.data = Path(data or Path(workdir) / "data")
        more = ["--http", "127.0.0.1:0"] if http else []
        super().__init__([WEFT_BIN, "log", "--listen", f"127.0.0.1:{port}", "--data", self.data,
                          *more, *extra], workdir, "log", name=name,
                         also=("streams",) if http else (), env=env)
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.http_port = self.port_of("streams") if http else None
        self.url = f"http://127.0.0.1:{self.http_port}" if http else None


def frame(api_key, version, corr, body, client=b"raw"):
    head = struct.pack(">hhih", api_key, version, corr, len(client)) + client
    msg = head + body
    return struct.pack(">i", len(msg)) + msg


def exchange(port, payload, timeout=5.0):
    """Send bytes, return (response bytes or b'', closed?)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(payload)
        size = _recv_exact(s, 4)
        if size is None:
            return b"", True
        (n,) = struct.unpack(">i", size)
        body = _recv_exact(s, n)
        return body or b"", body is None
    finally:
        s.close()


def _recv_exact(s, n):
    out = b""
    while len(out) < n:
        try:
            d = s.recv(n - len(out))
        except (ConnectionResetError, socket.timeout):
            return None
        if not d:
            return None
        out += d
    return out


def kstr(s):
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def run_py(code, timeout=60, **kw):
    """Run a Python client program (Debian's interpreter and packages)."""
    return subprocess.run(["/usr/bin/python3", "-c", code], capture_output=True, text=True,
                          timeout=timeout, **kw)


def wait_port_closed(port, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            return True
        time.sleep(0.05)
    return False


PY = sys.executable


# An LD_PRELOAD shim: fdatasync fails with EIO while the flag file exists,
# the way a failing disk makes it fail (the kernel's own error path).
FAIL_SHIM = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>
int fdatasync(int fd)
{
    const char *flag = getenv("WEFT_TEST_FAIL_FDATASYNC");
    if (flag && access(flag, F_OK) == 0) {
        errno = EIO;
        return -1;
    }
    return (int)syscall(SYS_fdatasync, fd);
}
"""


def failing_fdatasync(tmp_path):
    """Build the shim; return (flag path, env for Log(env=...)): while the
    flag file exists, the broker's fdatasync calls fail with EIO."""
    shim = Path(tmp_path) / "failsync.so"
    src = Path(tmp_path) / "failsync.c"
    src.write_text(FAIL_SHIM)
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(shim), str(src)], check=True)
    flag = Path(tmp_path) / "fail-now"
    return flag, {"LD_PRELOAD": str(shim), "WEFT_TEST_FAIL_FDATASYNC": str(flag),
                  # the shim comes before the sanitizer runtime in the load order
                  "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:verify_asan_link_order=0"}
