"""The explorer's local web server: one static page and a JSON API over an `Explorer`, on 127.0.0.1 only.

Python's standard library serves it (`http.server.ThreadingHTTPServer`): nothing to install beyond map-jax,
nothing fetched from the network (the page, its script and its style sheet are files of this package), and a
page that any browser opens. Routes:

  GET  /                 the page; GET /static/app.js, /static/style.css (a fixed set of names: no path sent
                         by the browser is ever opened)
  GET  /api/info         value names, each value's level at every slider position, means, the start palette
  POST /api/view         {"quantiles": {value: q or null}, "moved": value, "seq": n, "client": page id}
                         -> `Explorer.view`
  POST /api/adjust       {"quantiles", "method": "interpolate" | "greedy", "priority": [values]} -> the view of
                         the adjusted palette

A malformed request (bad JSON, unknown value, quantile outside [0, 1], body over 64 KiB) gets status 400 and
{"error": message}. Updates are computed one at a time; a `/api/view` request whose `seq` is older than one the
server has already received from the same page (`client`) is answered {"stale": true} without solving, so a
burst of slider moves costs one solve per move at most and the latest wins.
"""

from __future__ import annotations

from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import json
import os
import threading

from absl import logging

from map_jax.explorer.view import BadRequest, Explorer

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
STATIC = {  # URL path -> (file in STATIC_DIR, content type)
  "/": ("index.html", "text/html; charset=utf-8"),
  "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
  "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}
MAX_BODY = 64 * 1024


class ExplorerServer:
  """Serve `explorer` on http://127.0.0.1:PORT/ (port 0: any free port). `start()` serves from a thread,
  `serve_forever()` from the caller's; `close()` stops."""

  def __init__(self, explorer: Explorer, port: int = 0):
    self.explorer = explorer
    self._lock = threading.Lock()
    self._latest: dict[str, int] = {}  # each page's newest seq
    self._thread: threading.Thread | None = None
    self._httpd = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
    self._httpd.daemon_threads = True

  @property
  def url(self) -> str:
    host, port = self._httpd.server_address[:2]
    return f"http://{host}:{port}/"

  def start(self) -> "ExplorerServer":
    self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
    self._thread.start()
    return self

  def serve_forever(self) -> None:
    self._httpd.serve_forever()

  def close(self) -> None:
    self._httpd.shutdown()
    self._httpd.server_close()

  # API -------------------------------------------------------------------------------------------------

  def answer(self, route: str, body: dict) -> dict:
    if route == "/api/view":
      seq, client = body.get("seq"), str(body.get("client", ""))[:64]
      if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int)):
        raise BadRequest(f"seq must be an integer, got {seq!r}")
      with self._lock:
        if seq is not None:
          if seq < self._latest.get(client, -1):
            return {"stale": True, "seq": seq}
          self._latest[client] = seq
          while len(self._latest) > 256:  # forget the oldest pages
            self._latest.pop(next(iter(self._latest)))
        out = self.explorer.view(body.get("quantiles"), body.get("moved"))
      return {**out, "seq": seq}
    if route == "/api/adjust":
      with self._lock:
        return self.explorer.adjust(body.get("quantiles"), body.get("method"), body.get("priority"))
    raise KeyError(route)


def _handler(server: ExplorerServer):
  class Handler(BaseHTTPRequestHandler):
    def log_message(self, fmt, *args):  # requests go to absl's debug log, not stderr
      logging.debug("explorer: " + fmt, *args)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
      self.send_response(status)
      self.send_header("Content-Type", content_type)
      self.send_header("Content-Length", str(len(body)))
      self.send_header("Cache-Control", "no-store")
      self.end_headers()
      self.wfile.write(body)

    def _json(self, status: int, obj) -> None:
      self._send(status, json.dumps(obj).encode(), "application/json")

    def do_GET(self):  # noqa: N802  (http.server's name)
      path = self.path.split("?", 1)[0].split("#", 1)[0]
      if path == "/api/info":
        return self._json(HTTPStatus.OK, server.explorer.info())
      if path not in STATIC:
        return self._json(HTTPStatus.NOT_FOUND, {"error": f"no such page: {path}"})
      name, kind = STATIC[path]
      with open(os.path.join(STATIC_DIR, name), "rb") as f:
        self._send(HTTPStatus.OK, f.read(), kind)

    def do_POST(self):  # noqa: N802
      path = self.path.split("?", 1)[0]
      if path not in ("/api/view", "/api/adjust"):
        return self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {path}"})
      try:
        length = int(self.headers.get("Content-Length", "0"))
      except ValueError:
        return self._json(HTTPStatus.BAD_REQUEST, {"error": "Content-Length is not a number"})
      if not 0 < length <= MAX_BODY:
        return self._json(HTTPStatus.BAD_REQUEST, {"error": f"a request body of 1 to {MAX_BODY} bytes is expected"})
      try:
        body = json.loads(self.rfile.read(length).decode("utf-8"))
      except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return self._json(HTTPStatus.BAD_REQUEST, {"error": f"the body is not JSON: {e}"})
      if not isinstance(body, dict):
        return self._json(HTTPStatus.BAD_REQUEST, {"error": "the body must be a JSON object"})
      try:
        return self._json(HTTPStatus.OK, server.answer(path, body))
      except BadRequest as e:
        return self._json(HTTPStatus.BAD_REQUEST, {"error": str(e)})
      except Exception as e:  # noqa: BLE001  (the page shows the message; the server keeps serving)
        logging.exception("explorer: %s failed", path)
        return self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(e).__name__}: {e}"})

  return Handler


__all__ = ["ExplorerServer", "STATIC"]
