"""A webhook receiver whose endpoint is down until it is told it has recovered.

Answers every POST with 500 until a GET /recover arrives, then with 200. Prints its port on the
first line, then "<status> <webhook-id>" for every webhook it answers.
"""

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

out = threading.Lock()
recovered = threading.Event()


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        self.rfile.read(length)
        status = 200 if recovered.is_set() else 500
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()
        with out:
            sys.stdout.write(f"{status} {self.headers.get('webhook-id', '')}\n")
            sys.stdout.flush()

    def do_GET(self):
        if self.path == "/recover":
            recovered.set()
            self.send_response(204)
        else:
            self.send_response(404)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
