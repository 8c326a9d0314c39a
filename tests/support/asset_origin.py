"""An HTTP origin on 127.0.0.1 for the Remote Asset API tests: files, errors, slowness and
redirects on demand, and a record of every request it answered.

Routes:
  /files/NAME            the bytes put with `put(NAME, data)` (404 if none)
  /chunked/NAME          the same, without Content-Length (chunked)
  /status/CODE           an empty answer with that status
  /slow/SECONDS/NAME     waits, then answers like /files/NAME
  /redirect?to=URL       302 to URL
  /echo-headers          the request's headers, as JSON
"""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import parse_qs, urlsplit


class Origin:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._lock = threading.Lock()
        origin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                with origin._lock:
                    origin.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                origin.route(self)

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: object, client_address: object) -> None:
                pass  # a client that hangs up early (a download refused for its size) is expected

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self._thread: threading.Thread | None = None

    def put(self, name: str, data: bytes) -> str:
        self.files[name] = data
        return f"{self.base}/files/{name}"

    def hits(self, prefix: str) -> int:
        with self._lock:
            return sum(1 for path, _ in self.requests if path.startswith(prefix))

    def headers_of(self, prefix: str) -> list[dict[str, str]]:
        with self._lock:
            return [h for path, h in self.requests if path.startswith(prefix)]

    def route(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        segments = parts.path.strip("/").split("/")
        try:
            if segments[0] == "files" and len(segments) == 2:
                self._send_file(h, segments[1], chunked=False)
            elif segments[0] == "chunked" and len(segments) == 2:
                self._send_file(h, segments[1], chunked=True)
            elif segments[0] == "status":
                self._send(h, int(segments[1]), b"")
            elif segments[0] == "slow":
                time.sleep(float(segments[1]))
                self._send_file(h, segments[2], chunked=False)
            elif segments[0] == "redirect":
                h.send_response(302)
                h.send_header("Location", parse_qs(parts.query)["to"][0])
                h.send_header("Content-Length", "0")
                h.end_headers()
            elif segments[0] == "echo-headers":
                self._send(h, 200, json.dumps(dict(h.headers.items())).encode())
            else:
                self._send(h, 404, b"")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _send_file(self, h: BaseHTTPRequestHandler, name: str, chunked: bool) -> None:
        data = self.files.get(name)
        if data is None:
            self._send(h, 404, b"")
            return
        if not chunked:
            self._send(h, 200, data)
            return
        h.send_response(200)
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        for i in range(0, len(data), 65536):
            piece = data[i : i + 65536]
            h.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        h.wfile.write(b"0\r\n\r\n")

    def _send(self, h: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
        h.send_response(status)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def __enter__(self) -> "Origin":
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
