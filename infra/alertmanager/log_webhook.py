"""A webhook receiver for Alertmanager that prints every alert it gets, one line each.

docker-compose.yml runs it as `alert-log`, the receiver of infra/alertmanager/alertmanager.yml, so an
alert that fires shows in `docker compose logs -f alert-log`:

    FIRING DlkitHighErrorRate severity=critical  5xx above 5 % for 10 minutes  runbook: https://...

Standard library only: it runs in any Python 3 image. GET answers 200 (the health check).
"""

from __future__ import annotations

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def format_alert(alert: dict) -> str:
    labels, annotations = alert.get("labels", {}), alert.get("annotations", {})
    parts = [alert.get("status", "unknown").upper(), labels.get("alertname", "?")]
    parts += [f"{key}={value}" for key, value in sorted(labels.items()) if key in ("severity", "layer", "job")]
    line = " ".join(parts)
    if annotations.get("summary"):
        line += f"  {annotations['summary']}"
    if annotations.get("runbook_url"):
        line += f"  runbook: {annotations['runbook_url']}"
    return line


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._answer(200, b"alert-log: POST Alertmanager webhooks here\n")

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        try:
            payload = json.loads(self.rfile.read(length))
            alerts = payload["alerts"]
        except (ValueError, KeyError, TypeError):
            self._answer(400, b"expected an Alertmanager webhook payload (JSON with alerts)\n")
            return
        for alert in alerts:
            print(format_alert(alert), flush=True)
        self._answer(200, b"ok\n")

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        pass  # only the alerts go to stdout


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"alert-log listening on {args.host}:{args.port}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
