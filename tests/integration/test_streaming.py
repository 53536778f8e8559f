"""1 GiB through /echo and from /bytes: integrity (sha256) and bounded
server memory (VmRSS sampled while the data flows)."""
import hashlib
import os
import socket
import threading
import time

from weftutil import connect, expected_bytes_sha256

GiB = 1 << 30
MiB = 1 << 20
# The ASan build idles around 10-20 MB; output is paced by a 256 KiB high
# water mark, so a healthy server stays far below this bound while a copy
# of even a tenth of the stream would exceed it. ASan's quarantine of freed
# blocks (256 MB by default) would count as RSS although it is not live
# server memory, so these servers run with a small quarantine; leak and
# use-after-free detection stay on.
RSS_BOUND_KIB = 100 * 1024
SMALL_QUARANTINE = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:quarantine_size_mb=16"}
DEADLINE = 90.0


class RssSampler(threading.Thread):
    def __init__(self, w, period=0.05):
        super().__init__(daemon=True)
        self.w = w
        self.period = period
        self.samples = []
        self.stop_ev = threading.Event()

    def run(self):
        while not self.stop_ev.is_set():
            v = self.w.rss_kib()
            if v is not None:
                self.samples.append(v)
            time.sleep(self.period)

    def stop(self):
        self.stop_ev.set()
        self.join(5)
        return max(self.samples) if self.samples else None


class ChunkedHasher:
    """Incremental chunked-body decoder feeding a sha256 (no big copies)."""

    def __init__(self):
        self.h = hashlib.sha256()
        self.n = 0
        self.pending = bytearray()
        self.left = 0  # data bytes left in the current chunk
        self.state = "size"
        self.done = False

    def feed(self, data):
        mv = memoryview(data)
        i = 0
        while i < len(mv) and not self.done:
            if self.state == "data":
                take = min(self.left, len(mv) - i)
                self.h.update(mv[i:i + take])
                self.n += take
                self.left -= take
                i += take
                if self.left == 0:
                    self.state = "crlf"
                continue
            self.pending += mv[i:i + 1]
            i += 1
            if self.state == "size" and self.pending.endswith(b"\r\n"):
                size = int(bytes(self.pending[:-2]).split(b";")[0], 16)
                self.pending.clear()
                if size == 0:
                    self.state = "trailer"
                else:
                    self.left = size
                    self.state = "data"
            elif self.state == "crlf" and len(self.pending) == 2:
                assert self.pending == b"\r\n", bytes(self.pending)
                self.pending.clear()
                self.state = "size"
            elif self.state == "trailer" and self.pending.endswith(b"\r\n"):
                if self.pending == b"\r\n":
                    self.done = True
                self.pending.clear()
        return i


def read_head(sock, buf):
    while b"\r\n\r\n" not in buf:
        d = sock.recv(65536)
        assert d, f"EOF in response head: {bytes(buf)!r}"
        buf += d
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    return head.decode("latin-1"), rest


def test_echo_1gib_chunked_upload(weft):
    w = weft(workers=2, extra_env=SMALL_QUARANTINE)
    base = os.urandom(MiB)
    sent_hash = hashlib.sha256()
    sent = [0]
    werr = []
    s = connect(w.port, timeout=30)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * MiB)

    def writer():
        try:
            s.sendall(b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      b"Content-Type: application/x-test\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n")
            hdr = b"%x\r\n" % MiB
            for i in range(GiB // MiB):
                # every chunk differs (index stamped in), so reordering shows
                block = i.to_bytes(8, "big") + base[8:]
                sent_hash.update(block)
                s.sendall(hdr + block + b"\r\n")
                sent[0] += len(block)
            s.sendall(b"0\r\n\r\n")
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            werr.append(e)

    sampler = RssSampler(w)
    rss0 = w.rss_kib()
    sampler.start()
    t0 = time.monotonic()
    wt = threading.Thread(target=writer, daemon=True)
    wt.start()
    buf = bytearray()
    head, rest = read_head(s, buf)
    assert head.startswith("HTTP/1.1 200 OK\r\n"), head
    assert "\r\nTransfer-Encoding: chunked" in head
    assert "\r\nContent-Type: application/x-test" in head
    dec = ChunkedHasher()
    dec.feed(rest)
    rbuf = bytearray(4 * MiB)
    while not dec.done:
        assert time.monotonic() - t0 < DEADLINE, f"too slow: {dec.n} bytes echoed"
        n = s.recv_into(rbuf)
        assert n, f"EOF after {dec.n} echoed bytes"
        used = dec.feed(memoryview(rbuf)[:n])
        assert used == n or dec.done
    wt.join(30)
    peak = sampler.stop()
    s.close()
    assert not werr, werr
    assert sent[0] == GiB
    assert dec.n == GiB
    assert dec.h.hexdigest() == sent_hash.hexdigest()
    print(f"echo 1 GiB in {time.monotonic() - t0:.1f}s, rss {rss0} -> peak {peak} KiB")
    assert peak < RSS_BOUND_KIB, f"server RSS peaked at {peak} KiB (start {rss0} KiB)"


def test_bytes_1gib_download(weft):
    w = weft(workers=2, extra_env=SMALL_QUARANTINE)
    expected = expected_bytes_sha256(GiB)
    s = connect(w.port, timeout=30)
    s.sendall(b"GET /bytes?n=%d HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % GiB)
    sampler = RssSampler(w)
    rss0 = w.rss_kib()
    sampler.start()
    t0 = time.monotonic()
    buf = bytearray()
    head, rest = read_head(s, buf)
    assert head.startswith("HTTP/1.1 200 OK\r\n"), head
    assert f"\r\nContent-Length: {GiB}" in head
    h = hashlib.sha256(rest)
    got = len(rest)
    rbuf = bytearray(4 * MiB)
    mv = memoryview(rbuf)
    while got < GiB:
        assert time.monotonic() - t0 < DEADLINE, f"too slow: {got} bytes"
        n = s.recv_into(rbuf)
        assert n, f"EOF after {got} bytes"
        h.update(mv[:n])
        got += n
    peak = sampler.stop()
    # nothing after the body; the connection is still good for another request
    s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
    tail = b""
    while not tail.endswith(b'{"msg":"hi"}'):
        d = s.recv(4096)
        assert d, tail
        tail += d
    s.close()
    assert tail.startswith(b"HTTP/1.1 200 OK\r\n"), tail[:200]
    assert got == GiB
    assert h.hexdigest() == expected
    print(f"bytes 1 GiB in {time.monotonic() - t0:.1f}s, rss {rss0} -> peak {peak} KiB")
    assert peak < RSS_BOUND_KIB, f"server RSS peaked at {peak} KiB (start {rss0} KiB)"


def test_slow_reader_download_is_paced(weft):
    """A client that does not read: the server must stop producing once the
    socket buffers and its high-water mark are full, not buffer the rest."""
    w = weft(workers=1, extra_env=SMALL_QUARANTINE)
    s = connect(w.port, timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    rss0 = w.rss_kib()
    s.sendall(b"GET /bytes?n=%d HTTP/1.1\r\nHost: x\r\n\r\n" % (4 * GiB))
    time.sleep(1.5)
    rss1 = w.rss_kib()
    s.close()
    assert rss1 - rss0 < 64 * 1024, f"RSS grew {rss0} -> {rss1} KiB with a stalled reader"


def test_echo_backpressure_without_reader(weft):
    """A client that uploads to /echo but does not read the echo: the server
    must stop reading its input (output above the high-water mark) instead
    of buffering, so the upload stalls after a few MB; once the client reads,
    everything flows and arrives intact."""
    w = weft(workers=1, extra_env=SMALL_QUARANTINE)
    total = 256 * MiB
    block = os.urandom(MiB)
    s = connect(w.port, timeout=30)
    sent = [0]
    werr = []

    def writer():
        try:
            s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % total)
            for _ in range(total // MiB):
                s.sendall(block)
                sent[0] += MiB
        except BaseException as e:  # noqa: BLE001
            werr.append(e)

    rss0 = w.rss_kib()
    wt = threading.Thread(target=writer, daemon=True)
    wt.start()
    time.sleep(2.0)
    stalled_at = sent[0]
    rss1 = w.rss_kib()
    assert stalled_at < 64 * MiB, f"server accepted {stalled_at >> 20} MiB without a reader"
    assert rss1 - rss0 < 48 * 1024, f"RSS {rss0} -> {rss1} KiB while stalled"
    # now read it all
    buf = bytearray()
    head, rest = read_head(s, buf)
    assert head.startswith("HTTP/1.1 200 OK\r\n") and f"Content-Length: {total}" in head
    h = hashlib.sha256(rest)
    got = len(rest)
    rbuf = bytearray(4 * MiB)
    t0 = time.monotonic()
    while got < total:
        assert time.monotonic() - t0 < DEADLINE
        n = s.recv_into(rbuf)
        assert n, f"EOF after {got}"
        h.update(memoryview(rbuf)[:n])
        got += n
    wt.join(30)
    s.close()
    assert not werr, werr
    assert got == total
    want = hashlib.sha256()
    for _ in range(total // MiB):
        want.update(block)
    assert h.hexdigest() == want.hexdigest()
