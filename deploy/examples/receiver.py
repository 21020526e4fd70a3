# Verifies hookpost deliveries with the standardwebhooks package (pip install standardwebhooks).
import os
from http.server import BaseHTTPRequestHandler, HTTPServer
from standardwebhooks import Webhook

wh = Webhook(os.environ["WEBHOOK_SECRET"])  # the whsec_... value

class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        try:
            event = wh.verify(body, dict(self.headers))
        except Exception as e:
            self.send_response(401); self.end_headers(); print("rejected", e, flush=True); return
        # Deliveries are at-least-once: skip a webhook-id you have already processed.
        print("verified", self.headers["webhook-id"], flush=True)
        self.send_response(204); self.end_headers()

HTTPServer((os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "9000"))), Handler).serve_forever()
