"""A WebSocket echo server for tests/websocket.rs (Python `websockets`, sync API).

Prints `PORT <n>` once listening on 127.0.0.1 (an OS-chosen port), then serves until
killed. Each connection first gets the text message `hello` (sent right after the
handshake, so it may share a segment with the 101), then every message is echoed with
its type (text or binary). The text message `close-from-server` makes the server close
with code 4000. `--cert FILE --key FILE` serves wss:// instead.
"""

import argparse
import ssl
import sys

from websockets.exceptions import ConnectionClosed
from websockets.sync.server import serve


def handler(ws):
    try:
        ws.send("hello")
        for message in ws:
            if message == "close-from-server":
                ws.close(4000, "server bye")
                return
            ws.send(message)
    except ConnectionClosed:
        pass


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    context = None
    if args.cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.cert, args.key)
    with serve(
        handler,
        "127.0.0.1",
        0,
        ssl=context,
        max_size=None,
        compression=None,
        ping_interval=None,
    ) as server:
        print(f"PORT {server.socket.getsockname()[1]}", flush=True)
        server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
