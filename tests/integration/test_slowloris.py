"""Slowloris: many connections trickling a request head must neither starve
normal clients nor live past the header timeout."""
import select
import socket
import threading
import time

from weftutil import connect, get

NSLOW = 200
HEAD = b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: abcdefghij\r\n\r\n"


def test_slowloris_with_header_timeout(weft):
    w = weft(workers=2, config="http:\n  header_timeout: 2s\n")
    slow = [connect(w.port, timeout=5) for _ in range(NSLOW)]
    for s in slow:
        s.setblocking(False)
    got = {i: b"" for i in range(NSLOW)}
    closed_at = {}
    answered_at = {}
    send_errors = {}
    stop = threading.Event()
    latencies = []
    fast_errors = []

    def fast_client():
        while not stop.is_set():
            t = time.monotonic()
            try:
                r = get(w.port, "/hello", timeout=2)
                ok = r.status == 200 and r.body == b'{"msg":"hi"}'
                if not ok:
                    fast_errors.append(repr(r))
            except OSError as e:
                fast_errors.append(repr(e))
            latencies.append(time.monotonic() - t)
            time.sleep(0.05)

    def poll_slow(now):
        idx = [i for i in range(NSLOW) if i not in closed_at]
        if not idx:
            return
        ready, _, _ = select.select([slow[i] for i in idx], [], [], 0)
        for s in ready:
            i = slow.index(s)
            try:
                d = s.recv(4096)
            except (ConnectionResetError, BlockingIOError) as e:
                if isinstance(e, BlockingIOError):
                    continue
                closed_at[i] = now
                continue
            if d:
                if not got[i]:
                    answered_at[i] = now
                got[i] += d
            else:
                closed_at[i] = now

    ft = threading.Thread(target=fast_client, daemon=True)
    t0 = time.monotonic()
    ft.start()
    try:
        # one byte per connection per second, for ~5 s
        for k in range(5):
            tick = t0 + k
            while time.monotonic() < tick:
                poll_slow(time.monotonic())
                time.sleep(0.02)
            for i, s in enumerate(slow):
                if i in closed_at or i in send_errors:
                    continue
                try:
                    s.send(HEAD[k:k + 1])
                except OSError as e:  # the server closed its side already
                    send_errors[i] = repr(e)
        end = t0 + 6.0
        while time.monotonic() < end and len(closed_at) < NSLOW:
            poll_slow(time.monotonic())
            time.sleep(0.02)
    finally:
        stop.set()
        ft.join(5)
        for s in slow:
            s.close()

    assert not fast_errors, fast_errors[:5]
    assert len(latencies) >= 20, f"only {len(latencies)} normal requests in ~6 s"
    assert max(latencies) < 1.0, f"normal request took {max(latencies):.2f}s"

    # every slow connection got exactly a 408 and was closed, ~2 s after its
    # first byte (sent at t0) — not earlier, and not much later
    not_closed = [i for i in range(NSLOW) if i not in closed_at]
    assert not not_closed, f"{len(not_closed)} slow connections still open after 6 s"
    bad = [(i, got[i][:60]) for i in range(NSLOW)
           if not got[i].startswith(b"HTTP/1.1 408 Request Timeout\r\n")]
    assert not bad, f"{len(bad)} slow connections without 408: {bad[:3]}"
    for i in range(NSLOW):
        assert b"\r\nConnection: close\r\n" in got[i]
        assert got[i].endswith(b'{"error":"request header timeout","status":408}\n'), got[i]
    first = min(answered_at.values()) - t0
    last = max(answered_at.values()) - t0
    assert first >= 1.9, f"408 after {first:.2f}s, header_timeout is 2s"
    assert last < 3.5, f"last 408 after {last:.2f}s"


def test_many_idle_connections_do_not_block(weft):
    """Connections that never send anything hold no worker hostage either."""
    w = weft(workers=1)
    idle = [socket.create_connection(("127.0.0.1", w.port), timeout=5) for _ in range(300)]
    try:
        for _ in range(20):
            t = time.monotonic()
            r = get(w.port, "/hello", timeout=2)
            assert r.status == 200
            assert time.monotonic() - t < 0.5
    finally:
        for s in idle:
            s.close()
