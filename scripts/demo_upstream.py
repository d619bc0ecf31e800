#!/usr/bin/env python3
"""A tiny demo upstream for ServiceQ (standard library only).

    demo_upstream.py --port PORT --name NAME [--record FILE] [--address 127.0.0.1]
                     [--tls-cert PEM --tls-key PEM]

Every response is 200 text/plain naming the upstream: a GET answers "NAME\\n"; any other
method answers "NAME got BODY\\n" and appends one line to the record file,
"BODY<TAB>X-Request-Id", in the order the requests arrived (flushed at once, so another
process can poll it). HTTP/1.1 with keep-alive, so ServiceQ's connection pool is used.
It prints "ready NAME PORT" on stdout once it listens and stops on SIGTERM/SIGINT.
"""

import argparse
import http.server
import signal
import ssl
import sys
import threading


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--record")
    ap.add_argument("--address", default="127.0.0.1")
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    args = ap.parse_args()
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "demo-upstream"

        def log_message(self, fmt, *a):  # quiet: the demo narrates instead
            pass

        def reply(self, text):
            body = text.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Upstream", args.name)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_GET(self):
            self.reply(args.name + "\n")

        do_HEAD = do_GET

        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n).decode("utf-8", "replace")
            if args.record:
                rid = self.headers.get("X-Request-Id", "-")
                with lock, open(args.record, "a", encoding="utf-8") as f:
                    f.write(f"{body}\t{rid}\n")
                    f.flush()
            self.reply(f"{args.name} got {body}\n")

        do_PUT = do_PATCH = do_DELETE = do_POST

    class Server(http.server.ThreadingHTTPServer):
        allow_reuse_address = True  # restart on the same port at once
        daemon_threads = True

    srv = Server((args.address, args.port), Handler)
    if args.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)

    def stop(*_):
        # shutdown() waits for serve_forever, so run it off the main thread.
        threading.Thread(target=srv.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"ready {args.name} {srv.server_address[1]}", flush=True)
    srv.serve_forever(poll_interval=0.1)
    srv.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
