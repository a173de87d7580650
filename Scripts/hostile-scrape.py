#!/usr/bin/env python3
"""`daxmirror metrics --listen` against hostile clients, on loopback only.

Starts the exporter (small limits so the run is short: --max-connections 16,
--request-timeout 3) and, phase by phase, attacks it the ways a hostile or
broken client would, checking after each that
  - its resident memory stays under RSS_BOUND_MIB (stated here, printed),
  - it answers the next good scrape (200 and the exposition),
  - its connections are bounded and closed at the deadlines,
  - it does not spin (CPU while only idle clients are connected),
and, with its open-file limit cut (prlimit --nofile), that a scrape that
could not read the host is a 503, never a 200 with zeros.

Every loop is bounded in count and time; every socket is closed at the end.
Usage: Scripts/hostile-scrape.py PATH/TO/daxmirror
Exit 0 when every check holds; the last line is 'N passed, N failed'.
"""
import os
import re
import socket
import subprocess
import sys
import time

RSS_BOUND_MIB = 64          # the server's resident memory, whatever the clients do
MAX_CONNECTIONS = 16
REQUEST_TIMEOUT = 3         # seconds; a connection lives at most 3x this
GOOD = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n"

binary = sys.argv[1]
passed = failed = 0
rows = []


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
    rows.append(("ok" if ok else "FAILED", name, detail))
    print(("ok      " if ok else "FAILED  ") + name + (f"  ({detail})" if detail else ""), flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start(extra_limit=None):
    port = free_port()
    cmd = [binary, "metrics", "--listen", f"127.0.0.1:{port}",
           "--max-connections", str(MAX_CONNECTIONS), "--request-timeout", str(REQUEST_TIMEOUT)]
    if extra_limit:
        cmd = ["prlimit", f"--nofile={extra_limit}"] + cmd
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 30
    while time.time() < deadline:
        if p.poll() is not None:
            return p, port, p.stderr.read().decode(errors="replace")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return p, port, None
        except OSError:
            time.sleep(0.1)
    return p, port, "did not listen within 30 s"


def server_pid(p):
    # With prlimit the exporter is prlimit's exec'd self: the same pid.
    return p.pid


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return -1


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def exchange(port, data, timeout=15, read_all=True):
    """Sends data, reads until EOF (or timeout); returns the bytes received and whether EOF came."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        got = b""
        end = time.time() + timeout
        while time.time() < end:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                return got, False
            except ConnectionResetError:
                return got, True
            if not chunk:
                return got, True
            got += chunk
            if not read_all:
                return got, False
        return got, False
    finally:
        s.close()


def good_scrape(port, with_eof=False):
    got, eof = exchange(port, GOOD)
    status = got.split(b"\r\n", 1)[0].decode(errors="replace")
    return (status, got, eof) if with_eof else (status, got)


def scrape_ok(port):
    status, body = good_scrape(port)
    return status.startswith("HTTP/1.1 200") and b"daxmirror_scrape_processes" in body, status


def connect_many(port, n):
    socks = []
    for _ in range(n):
        try:
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        except OSError:
            break
    return socks


def wait_closed(socks, seconds):
    """How many of socks the server closed within seconds (EOF or reset)."""
    closed = set()
    end = time.time() + seconds
    for s in socks:
        s.setblocking(False)
    while time.time() < end and len(closed) < len(socks):
        for i, s in enumerate(socks):
            if i in closed:
                continue
            try:
                if s.recv(65536) == b"":
                    closed.add(i)
            except BlockingIOError:
                pass
            except OSError:
                closed.add(i)
        time.sleep(0.05)
    return len(closed)


def close_all(socks):
    for s in socks:
        try:
            s.close()
        except OSError:
            pass


p, port, err = start()
if err:
    print(f"the exporter did not start: {err}")
    print("0 passed, 1 failed")
    sys.exit(1)
pid = server_pid(p)
try:
    ok, status = scrape_ok(port)
    check("a good scrape", ok, status)
    base_rss = rss_mib(pid)
    base_fds = open_fds(pid)
    peak = base_rss

    # 1. Pipelined requests never read: 50 connections x 2,000 requests each.
    socks = connect_many(port, 50)
    for s in socks:
        s.setblocking(False)
    sent = 0
    end = time.time() + 3
    while time.time() < end:
        for s in socks:
            try:
                sent += s.send(GOOD * 50)
            except (BlockingIOError, OSError):
                pass
        peak = max(peak, rss_mib(pid))
    ok, status = scrape_ok(port)
    check("pipelined unread requests: the next good scrape is answered", ok, f"{status}; {sent // len(GOOD)} requests sent")
    close_all(socks)
    peak = max(peak, rss_mib(pid))

    # 2. Idle connections, far more than the limit.
    socks = connect_many(port, 300)
    t0, c0 = time.time(), cpu_seconds(pid)
    time.sleep(1)
    cpu = (cpu_seconds(pid) - c0) / (time.time() - t0)
    ok, status = scrape_ok(port)
    check("300 idle connections: the next good scrape is answered", ok, status)
    check("300 idle connections: the server does not spin", cpu < 0.2, f"{cpu:.0%} of a CPU")
    closed = wait_closed(socks, REQUEST_TIMEOUT * 3 + 2)
    check("idle connections are all closed by the request deadline", closed == len(socks), f"{closed} of {len(socks)}")
    close_all(socks)
    peak = max(peak, rss_mib(pid))

    # 3. Slowloris: a header byte every 0.3 s.
    socks = connect_many(port, 100)
    partial = b"GET /metrics HTTP/1.1\r\nX-Slow: " + b"a" * 200
    start_slow = time.time()
    closed_at = {}
    for s in socks:
        s.setblocking(False)
    i = 0
    while time.time() - start_slow < REQUEST_TIMEOUT * 3 + 2 and len(closed_at) < len(socks):
        for k, s in enumerate(socks):
            if k in closed_at:
                continue
            try:
                s.send(partial[i % len(partial):i % len(partial) + 1])
                if s.recv(4096) == b"":
                    closed_at[k] = time.time() - start_slow
            except BlockingIOError:
                pass
            except OSError:
                closed_at[k] = time.time() - start_slow
        if i == 3:
            ok, status = scrape_ok(port)
            check("slowloris: the next good scrape is answered", ok, status)
        i += 1
        time.sleep(0.3)
    latest = max(closed_at.values()) if closed_at else -1
    check("slowloris connections are all closed by the request deadline",
          len(closed_at) == len(socks) and latest <= REQUEST_TIMEOUT + 2, f"{len(closed_at)} of {len(socks)}, last at {latest:.1f} s")
    close_all(socks)
    peak = max(peak, rss_mib(pid))

    # 4. Protocol oddities: each gets one answer (or none) and a close.
    for name, req, want in [
        ("CONNECT", b"CONNECT localhost:80 HTTP/1.1\r\nHost: localhost\r\n\r\n", b"HTTP/1.1 405"),
        ("Expect: 100-continue", b"GET /metrics HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n", b"HTTP/1.1 200"),
        ("HTTP/2.0 request line", b"GET /metrics HTTP/2.0\r\nHost: x\r\n\r\n", (b"HTTP/1.1 505", b"HTTP/1.1 400")),
        ("HTTP/0.9", b"GET /metrics\r\n", None),
        ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64, None),
        ("a header of 200 KB", b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 200_000 + b"\r\n\r\n", None),
    ]:
        try:
            got, eof = exchange(port, req, timeout=REQUEST_TIMEOUT * 3 + 2)
        except OSError as e:
            got, eof = b"", True
        answers = len(re.findall(rb"(?m)^HTTP/1\.[01] \d{3}", got))
        if want:
            ok = got.startswith(want if isinstance(want, tuple) else (want,)) and answers == 1 and eof
        else:
            ok = answers <= 1 and eof
        first = got.split(b"\r\n", 1)[0].decode(errors="replace") or "no answer"
        check(f"{name}: one answer at most, then closed", ok,
              f"{first}; {answers} answers; {'closed' if eof else 'left open'}")
    ok, status = scrape_ok(port)
    check("after the oddities: the next good scrape is answered", ok, status)

    time.sleep(REQUEST_TIMEOUT * 3 + 1)
    fds = open_fds(pid)
    check("descriptors back to their start", fds <= base_fds + 2, f"{fds} open, {base_fds} at start")
    peak = max(peak, rss_mib(pid))
    check(f"resident memory under {RSS_BOUND_MIB} MiB throughout", peak < RSS_BOUND_MIB,
          f"peak {peak:.1f} MiB, {base_rss:.1f} MiB after the first scrape")
finally:
    p.terminate()
    p.wait(timeout=10)

# 5. Few file descriptors: the server bounds its connections by its limit,
# and a scrape that cannot read the host is not a 200 with zeros.
reference = subprocess.run([binary, "metrics"], capture_output=True, text=True).stdout
ref_kernel = re.search(r"^daxmirror_kernel_info\{.*\}", reference, re.M)
seen = {"started": 0, "200": 0, "503": 0}
bad = []
for limit in range(12, 41, 2):
    p, port, err = start(extra_limit=limit)
    if err:
        continue
    seen["started"] += 1
    try:
        socks = connect_many(port, 40)
        status, body, eof = good_scrape(port, with_eof=True)
        close_all(socks)
        text = body.decode(errors="replace")
        if status.startswith("HTTP/1.1 503"):
            seen["503"] += 1
            if "scrape failed" not in text:
                bad.append(f"nofile {limit}: 503 without a reason")
        elif status.startswith("HTTP/1.1 200"):
            seen["200"] += 1
            processes = re.search(r"^daxmirror_scrape_processes (\S+)", text, re.M)
            kernel = re.search(r"^daxmirror_kernel_info\{.*\}", text, re.M)
            if not processes or float(processes.group(1)) == 0:
                bad.append(f"nofile {limit}: 200 with no processes")
            if not kernel or not ref_kernel or kernel.group(0) != ref_kernel.group(0):
                bad.append(f"nofile {limit}: 200 with another kernel_info: {kernel.group(0) if kernel else None}")
        elif status == "" and eof:
            pass  # closed unanswered to make room for a newer connection: acceptable
        else:
            bad.append(f"nofile {limit}: {status or 'no answer within 15 s'}")
    finally:
        p.terminate()
        p.wait(timeout=10)
check("few descriptors: every answer is the host's measurement or a 503 with its reason", not bad and seen["started"] > 0,
      f"{seen}; {bad[:3]}")

print()
print(f"{passed} passed, {failed} failed")
sys.exit(0 if failed == 0 else 1)
