// Verifies a Dispatcher webhook (Standard Webhooks signature) with Node's built-in crypto only.
//
// Usage in an HTTP handler: verify(secret, req.headers, rawBodyString) -> true | false.
// Run as a script it reads {"secret", "headers", "body"} as JSON on stdin and exits 0 if valid.
const crypto = require("node:crypto");

const TOLERANCE_SECONDS = 5 * 60;

function verify(secret, headers, rawBody, now = Date.now() / 1000) {
  const id = headers["webhook-id"];
  const timestamp = headers["webhook-timestamp"];
  const signatures = headers["webhook-signature"];
  if (!id || !timestamp || !signatures) return false;
  // Refuse old or future-dated deliveries: a captured webhook cannot be replayed later.
  if (Math.abs(now - Number(timestamp)) > TOLERANCE_SECONDS) return false;
  const key = Buffer.from(secret.replace(/^whsec_/, ""), "base64");
  const expected = crypto
    .createHmac("sha256", key)
    .update(`${id}.${timestamp}.${rawBody}`)
    .digest();
  // Several space-separated entries while a rotated secret is still valid: any may match.
  return signatures.split(" ").some((entry) => {
    const [version, signature] = entry.split(",");
    const given = Buffer.from(signature || "", "base64");
    return (
      version === "v1" &&
      given.length === expected.length &&
      crypto.timingSafeEqual(given, expected)
    );
  });
}

module.exports = { verify };

if (require.main === module) {
  let input = "";
  process.stdin.on("data", (chunk) => (input += chunk));
  process.stdin.on("end", () => {
    const { secret, headers, body } = JSON.parse(input);
    process.exit(verify(secret, headers, body) ? 0 : 1);
  });
}
