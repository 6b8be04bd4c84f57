"""``avis view --serve``: the page's folder over HTTP on 127.0.0.1 only (e.g. through an SSH tunnel from a
remote machine). The page itself needs no server.

The standard library's file handler (which keeps requests inside the folder) plus byte ranges: browsers seek
in a ``<video>`` with ``Range`` requests and do not seek in media served without them.
"""

from __future__ import annotations

import functools
import os
import re
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HOST = "127.0.0.1"
_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class RangeHandler(SimpleHTTPRequestHandler):
    """Files of one folder; ``Range: bytes=a-b`` gets 206 with that slice (one range; others get the file)."""

    _remaining: int | None = None  # bytes of the range being sent

    def send_head(self):
        self._remaining = None
        path = self.translate_path(self.path)
        m = _RANGE.match(self.headers.get("Range", "").strip())
        if m is None or os.path.isdir(path) or not os.path.isfile(path) or m.group(1) == m.group(2) == "":
            return super().send_head()
        size = os.path.getsize(path)
        if m.group(1):
            start = int(m.group(1))
            end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
        else:  # suffix range: the last N bytes
            start, end = max(0, size - int(m.group(2))), size - 1
        if start >= size or start > end:
            self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        f = open(path, "rb")  # noqa: SIM115 - closed by copyfile's caller (SimpleHTTPRequestHandler.do_GET)
        f.seek(start)
        self.send_response(HTTPStatus.PARTIAL_CONTENT)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        self._remaining = end - start + 1
        return f

    def end_headers(self):
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def copyfile(self, source, outputfile):
        n = self._remaining
        if n is None:
            return super().copyfile(source, outputfile)
        self._remaining = None
        while n > 0:
            buf = source.read(min(n, 1 << 16))
            if not buf:
                break
            outputfile.write(buf)
            n -= len(buf)

    def log_message(self, format, *args):  # noqa: A002 - the standard library's signature
        pass


def serve(folder: str | os.PathLike, port: int = 8765) -> ThreadingHTTPServer:
    """A server for ``folder`` bound to 127.0.0.1:``port`` (0: any free port); call ``serve_forever()``."""
    handler = functools.partial(RangeHandler, directory=os.fspath(Path(folder)))
    return ThreadingHTTPServer((HOST, port), handler)
