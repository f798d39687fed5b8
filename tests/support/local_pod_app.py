"""A tiny program for pods on the local-process node (tests/e2e/test_cluster.py).

Standard library only; configured by its environment:

  APP_PORT            serve HTTP on $PHASEGATE_POD_IP:$APP_PORT (GET /env -> JSON of the
                      environment, GET /healthz -> ok); unset: no server
  APP_EVENTS          a file to which it appends one line per event: started, sigterm, done
  APP_SHUTDOWN_SECS   on SIGTERM: record "sigterm", work this long, record "done", exit 0
  APP_IGNORE_SIGTERM  "1": record "sigterm" and keep running (to be SIGKILLed)
  APP_EXIT_CODE       exit with this code at once, after writing APP_MESSAGE to the
                      termination message file ($PHASEGATE_TERMINATION_MESSAGE_PATH)
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import sys
import threading
import time

env = os.environ


def event(what: str) -> None:
    if env.get("APP_EVENTS"):
        with open(env["APP_EVENTS"], "a") as f:
            f.write(f"{what} {time.time():.3f}\n")


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        if self.path == "/env":
            body = json.dumps(dict(env)).encode()
        elif self.path == "/healthz":
            body = b"ok"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        print("http:", fmt % args, flush=True)


def on_sigterm(_signum, _frame):
    event("sigterm")
    print("got SIGTERM", flush=True)
    if env.get("APP_IGNORE_SIGTERM") == "1":
        return
    time.sleep(float(env.get("APP_SHUTDOWN_SECS", "0")))
    event("done")
    print("shutdown complete", flush=True)
    os._exit(0)


def main() -> None:
    if "APP_EXIT_CODE" in env:
        with open(env["PHASEGATE_TERMINATION_MESSAGE_PATH"], "w") as f:
            f.write(env.get("APP_MESSAGE", ""))
        print(f"exiting with {env['APP_EXIT_CODE']}", flush=True)
        sys.exit(int(env["APP_EXIT_CODE"]))
    signal.signal(signal.SIGTERM, on_sigterm)
    if env.get("APP_PORT"):
        server = http.server.ThreadingHTTPServer((env["PHASEGATE_POD_IP"], int(env["APP_PORT"])), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        print(f"serving on {env['PHASEGATE_POD_IP']}:{env['APP_PORT']}", flush=True)
    event("started")
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
