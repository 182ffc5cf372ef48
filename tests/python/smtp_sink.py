"""A real SMTP server on loopback (aiosmtpd) for the email provider's tests.

Prints its port on the first line, then one JSON line per DATA command it answers:
  {"event": "accepted", "queueId", "mailFrom", "rcptTos", "headers": {...}, "parts": [...]}
  {"event": "deferred" | "rejected", "reply": "..."}
Each part is {"contentType", "filename", "payloadB64"} (multipart containers left out).

  --reject CODE   answer every message with CODE (a 5xx), e.g. 550
  --defer N       answer the first N messages with 451, then accept
  --quiet         print nothing after the port (for the benchmark: parsing costs CPU)
"""

import argparse
import asyncio
import base64
import email
import email.policy
import json
import sys
import uuid

from aiosmtpd.smtp import SMTP

parser = argparse.ArgumentParser()
parser.add_argument("--reject", type=int, default=0)
parser.add_argument("--defer", type=int, default=0)
parser.add_argument("--quiet", action="store_true")
args = parser.parse_args()


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class Handler:
    def __init__(self):
        self.deferred = 0

    async def handle_DATA(self, server, session, envelope):
        if args.reject:
            reply = f"{args.reject} 5.7.1 Message refused by policy"
            emit({"event": "rejected", "reply": reply})
            return reply
        if self.deferred < args.defer:
            self.deferred += 1
            reply = "451 4.3.0 Temporary local problem, try again later"
            emit({"event": "deferred", "reply": reply})
            return reply
        queue_id = uuid.uuid4().hex[:12].upper()
        if args.quiet:
            return f"250 2.0.0 Ok: queued as {queue_id}"
        msg = email.message_from_bytes(envelope.original_content or envelope.content,
                                       policy=email.policy.default)
        parts = []
        for part in msg.walk():
            if part.is_multipart():
                continue
            payload = part.get_payload(decode=True) or b""
            parts.append({
                "contentType": part.get_content_type(),
                "filename": part.get_filename(),
                "payloadB64": base64.b64encode(payload).decode(),
            })
        headers = {k.lower(): str(v) for k, v in msg.items()}
        emit({
            "event": "accepted",
            "queueId": queue_id,
            "mailFrom": envelope.mail_from,
            "rcptTos": envelope.rcpt_tos,
            "headers": headers,
            "parts": parts,
        })
        return f"250 2.0.0 Ok: queued as {queue_id}"


async def main():
    handler = Handler()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(handler, hostname="sink.test"),
                                      "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
