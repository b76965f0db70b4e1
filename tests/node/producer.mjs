// A Node.js BullMQ producer, as the original system had: add {image} to the queue and await the
// worker's answer with job.waitUntilFinished. Prints one JSON line: {"ok": true, "result": ...}
// or {"ok": false, "error": "<failedReason>"}.
// usage: node producer.mjs IMAGE_FILE   (env REDIS_URL, FACESCORE_QUEUE, NODE_PATH=<node_modules>)
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";

const require = createRequire(join(process.env.NODE_PATH || process.cwd(), "_"));
const { Queue, QueueEvents } = require("bullmq");

const url = new URL(process.env.REDIS_URL || "redis://127.0.0.1:6379");
const connection = { host: url.hostname, port: Number(url.port || 6379), maxRetriesPerRequest: null };
const name = process.env.FACESCORE_QUEUE || "facescore";
const queue = new Queue(name, { connection });
const events = new QueueEvents(name, { connection });

let code = 0;
try {
  await events.waitUntilReady();
  const image = readFileSync(process.argv[2]).toString("base64");
  const job = await queue.add("score", { image });
  const result = await job.waitUntilFinished(events, 60000);
  console.log(JSON.stringify({ ok: true, id: job.id, result }));
} catch (err) {
  console.log(JSON.stringify({ ok: false, error: String(err && err.message ? err.message : err) }));
  code = 1;
} finally {
  await events.close();
  await queue.close();
}
process.exit(code);
