"""A logging proxy that records what a real client sends, to replay it in tests.

Every request is forwarded to the upstream server and written to OUT/NNN.json (method, path, headers
without credentials or connection details, JSON body); the response streams back untouched, so the
client works as usual.

    python -m tests.api.record_requests --upstream http://127.0.0.1:8000 --port 8765 --out /tmp/recorded
    ANTHROPIC_BASE_URL=http://127.0.0.1:8765 ANTHROPIC_API_KEY=x claude -p "Say hello"
    python -m tests.api.record_requests --scrub /tmp/recorded/002.json --replace /home/me/project=/home/user/project \
        > tests/api/fixtures/claude_code_request.json

`--scrub` replaces ids (UUIDs, long hex strings) with fixed stand-ins and applies each --replace, so a
recording names no machine, user or session.
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import itertools
import json
import re
import sys
import threading
import urllib.parse
from pathlib import Path

CREDENTIAL_HEADERS = {"x-api-key", "authorization", "cookie"}
# Hop-by-hop headers: each side of the proxy has its own connection.
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
LONG_HEX = re.compile(r"\b[0-9a-f]{32,}\b", re.IGNORECASE)


def scrub(text: str, replacements: list[tuple[str, str]]) -> str:
    """`text` with each UUID and long hex id replaced by a fixed stand-in (the same id, the same stand-in)."""
    for old, new in replacements:
        text = text.replace(old, new)
    stand_ins: dict[str, str] = {}

    def uuid_stand_in(match: re.Match) -> str:
        key = match.group(0).lower()
        return stand_ins.setdefault(key, f"00000000-0000-4000-8000-{len(stand_ins) + 1:012d}")

    def hex_stand_in(match: re.Match) -> str:
        key = match.group(0).lower()
        return stand_ins.setdefault(key, f"{len(stand_ins) + 1:x}".rjust(len(key), "0"))

    return LONG_HEX.sub(hex_stand_in, UUID.sub(uuid_stand_in, text))


def serve(upstream: str, port: int, out: Path) -> None:
    target = urllib.parse.urlsplit(upstream)
    counter = itertools.count(1)
    lock = threading.Lock()
    out.mkdir(parents=True, exist_ok=True)

    class Proxy(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            with lock:
                number = next(counter)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in CREDENTIAL_HEADERS | HOP_HEADERS}
            try:
                parsed = json.loads(body) if body else None
            except ValueError:
                parsed = body.decode(errors="replace")
            record = {"method": self.command, "path": self.path, "headers": headers, "body": parsed}
            (out / f"{number:03d}.json").write_text(json.dumps(record, indent=1, ensure_ascii=False))
            connection = http.client.HTTPConnection(target.hostname, target.port, timeout=3600)
            forwarded = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
            forwarded["Content-Length"] = str(len(body))
            connection.request(self.command, self.path, body=body or None, headers=forwarded)
            response = connection.getresponse()
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in HOP_HEADERS:
                    self.send_header(key, value)
            self.send_header("Connection", "close")  # the body ends when the connection does
            self.end_headers()
            while chunk := response.read1(65536):
                self.wfile.write(chunk)
                self.wfile.flush()
            connection.close()
            self.close_connection = True

        do_GET = do_POST = do_HEAD = do_DELETE = do_PUT = _forward

        def log_message(self, format, *args) -> None:
            sys.stderr.write(f"record_requests: {format % args}\n")

    http.server.ThreadingHTTPServer(("127.0.0.1", port), Proxy).serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", help="the server to forward to, e.g. http://127.0.0.1:8000")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--out", type=Path, help="folder for the recorded requests")
    parser.add_argument("--scrub", type=Path, help="print this recorded request with its ids scrubbed")
    parser.add_argument("--replace", action="append", default=[], help="OLD=NEW, applied before scrubbing ids")
    args = parser.parse_args()
    if args.scrub:
        replacements = [tuple(pair.split("=", 1)) for pair in args.replace]
        print(scrub(args.scrub.read_text(), replacements))
    elif args.upstream and args.out:
        serve(args.upstream, args.port, args.out)
    else:
        parser.error("give --upstream and --out to record, or --scrub FILE")


if __name__ == "__main__":
    main()
