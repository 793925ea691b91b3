"""Helpers shared by the guard service's tests and its load test (benchmarks/bench_guard.py): a
free loopback port, ``clipguard serve`` started and stopped around a block, and a real PNG
decompression bomb."""

from __future__ import annotations

import contextlib
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from typing import Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_service(*args: str, timeout: float = 60.0) -> Iterator[str]:
    """``clipguard serve ARGS --port P`` on a free port, until the block ends; yields its URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "clipguard", "serve", *args, "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=1).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the service did not start: {proc.stderr.read() if proc.stderr else ''}") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if proc.stderr:
            proc.stderr.close()


def bomb_png(side: int) -> bytes:
    """A side x side black PNG: a few hundred KB that inflate to side * side * 3 bytes."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    z = zlib.compressobj(9)
    body = b"".join(z.compress(b"\0" * (1 + 3 * side)) for _ in range(side)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))
