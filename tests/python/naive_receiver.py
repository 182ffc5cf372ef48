"""The simplest webhook receiver people write: Python's http.server as it comes.

ThreadingHTTPServer with its default listen backlog of 5, HTTP/1.0 (one connection per request).
Prints its port on the first line, then the webhook-id of every request it answers.
"""

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


# print() from several threads can interleave a line with another's newline.
out = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        self.rfile.read(length)
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()
        with out:
            sys.stdout.write(self.headers.get("webhook-id", "") + "\n")
            sys.stdout.flush()

    def log_message(self, format, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
assert server.request_queue_size == 5
print(server.server_address[1], flush=True)
server.serve_forever()
