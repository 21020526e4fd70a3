// Verifies hookpost deliveries with the standardwebhooks package (npm install standardwebhooks).
import http from "node:http";
import { Webhook } from "standardwebhooks";

const wh = new Webhook(process.env.WEBHOOK_SECRET); // the whsec_... value

http.createServer((req, res) => {
  let body = "";
  req.on("data", (chunk) => (body += chunk));
  req.on("end", () => {
    try {
      const event = wh.verify(body, req.headers);
      console.log("verified", req.headers["webhook-id"]);
      res.writeHead(204).end();
    } catch (err) {
      console.log("rejected", err.message);
      res.writeHead(401).end();
    }
  });
}).listen(Number(process.env.PORT ?? 9000), process.env.HOST ?? "127.0.0.1");
