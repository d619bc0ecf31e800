"""A WebSocket client for tests/websocket.rs (Python `websockets`, sync API).

usage: client.py URL MODE [--ca FILE] [--count N]

Modes (each prints `OK <mode>` and exits 0 on success, raises otherwise):
  basic         greeting, text and binary echoes, a 10 MiB binary and a 10 MiB text
                message, then a close from the client (code 1000 both ways)
  server-close  asks the server to close; expects code 4000 "server bye"
  many          opens --count connections at once, an echo on each, prints
                `OPEN <n>`, waits for a line on stdin, then closes them all
  idle          sends nothing; prints `CLOSED <seconds>` when the proxy closes it
"""

import argparse
import os
import ssl
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

MIB = 1024 * 1024

# Newer releases want connect() as a context manager; the plain call works in all.
warnings.filterwarnings("ignore", category=DeprecationWarning)


def open_ws(args):
    context = None
    if args.url.startswith("wss://"):
        context = ssl.create_default_context(cafile=args.ca)
    ws = connect(
        args.url,
        ssl=context,
        max_size=None,
        compression=None,
        ping_interval=None,
        proxy=None,
        open_timeout=10,
        close_timeout=10,
    )
    greeting = ws.recv(timeout=10)
    assert greeting == "hello", greeting
    return ws


def echo(ws, message):
    ws.send(message)
    back = ws.recv(timeout=30)
    assert type(back) is type(message), (type(back), type(message))
    assert back == message, f"echo differs ({len(back)} vs {len(message)} long)"


def basic(args):
    ws = open_ws(args)
    echo(ws, "text: h\u00e9llo \u2713")
    echo(ws, bytes(range(256)))
    echo(ws, os.urandom(10 * MIB))
    echo(ws, "x" * (10 * MIB))
    ws.close()
    assert ws.close_code == 1000, ws.close_code


def server_close(args):
    ws = open_ws(args)
    ws.send("close-from-server")
    try:
        ws.recv(timeout=10)
        raise AssertionError("no close from the server")
    except ConnectionClosed as closed:
        assert closed.rcvd is not None, closed
        assert (closed.rcvd.code, closed.rcvd.reason) == (4000, "server bye"), closed.rcvd


def many(args):
    def one(i):
        ws = open_ws(args)
        echo(ws, f"tunnel {i}")
        return ws

    with ThreadPoolExecutor(max_workers=args.count) as pool:
        sockets = list(pool.map(one, range(args.count)))
    print(f"OPEN {len(sockets)}", flush=True)
    sys.stdin.readline()
    for i, ws in enumerate(sockets):
        echo(ws, f"again {i}")
        ws.close()
        assert ws.close_code == 1000, ws.close_code


def idle(args):
    ws = open_ws(args)
    started = time.monotonic()
    try:
        ws.recv(timeout=30)
        raise AssertionError("a message on an idle tunnel")
    except ConnectionClosed:
        print(f"CLOSED {time.monotonic() - started:.3f}", flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("mode", choices=["basic", "server-close", "many", "idle"])
    parser.add_argument("--ca")
    parser.add_argument("--count", type=int, default=100)
    args = parser.parse_args()
    {"basic": basic, "server-close": server_close, "many": many, "idle": idle}[args.mode](args)
    print(f"OK {args.mode}", flush=True)


if __name__ == "__main__":
    main()
