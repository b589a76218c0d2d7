#!/usr/bin/env python3
"""Scenario 5: holds N idle keep-alive connections open against a proxy and measures its memory.

Measures the resident memory of the given processes (and their children), then opens N
connections, sends one full request on each (the same headers as the load: token, API key) and
reads its 200 answer, leaves them idle for a moment, measures again, then checks that a sample of
them is still open and usable by sending a second request on each. Prints one JSON line.
Standard library only.
"""

import argparse
import asyncio
import json
import os
import time


def tree(pid: int) -> list:
    out = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                for c in f.read().split():
                    out += tree(int(c))
    except OSError:
        pass
    return out


def rss_kib(pids) -> int:
    total = 0
    for root in pids:
        for p in tree(root):
            try:
                with open(f"/proc/{p}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1])
            except OSError:
                pass
    return total


async def exchange(reader, writer, request: bytes) -> int:
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if length:
        await reader.readexactly(length)
    return status


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", required=True)
    ap.add_argument("--token-file", required=True)
    ap.add_argument("--api-key", required=True)
    ap.add_argument("--connections", type=int, default=10_000)
    ap.add_argument("--pid", type=int, action="append", required=True)
    ap.add_argument("--settle", type=float, default=3.0)
    ap.add_argument("--check", type=int, default=200)
    a = ap.parse_args()
    token = open(a.token_file).read().strip()
    request = (
        f"GET {a.path} HTTP/1.1\r\nHost: 127.0.0.1:{a.port}\r\n"
        f"Authorization: Bearer {token}\r\nx-api-key: {a.api_key}\r\n\r\n"
    ).encode()

    before = rss_kib(a.pid)
    conns, failed, non200 = [], 0, 0
    sem = asyncio.Semaphore(256)

    async def one():
        nonlocal failed, non200
        async with sem:
            try:
                r, w = await asyncio.open_connection("127.0.0.1", a.port)
                if await exchange(r, w, request) != 200:
                    non200 += 1
                conns.append((r, w))
            except (OSError, asyncio.IncompleteReadError, ValueError):
                failed += 1

    t0 = time.time()
    await asyncio.gather(*(one() for _ in range(a.connections)))
    opened = time.time() - t0
    await asyncio.sleep(a.settle)
    held = rss_kib(a.pid)

    alive = 0
    for r, w in conns[: a.check]:
        try:
            if await asyncio.wait_for(exchange(r, w, request), 5) == 200:
                alive += 1
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
            pass
    n = len(conns)
    for _, w in conns:
        w.close()
    print(json.dumps({
        "connections": n,
        "failed": failed,
        "non200": non200,
        "open_seconds": round(opened, 2),
        "rss_before_kib": before,
        "rss_held_kib": held,
        "per_conn_kib": round((held - before) / n, 2) if n else None,
        "checked": min(n, a.check),
        "still_open": alive,
    }))


if __name__ == "__main__":
    asyncio.run(main())
