// Refreshes the committed copy of the server's OpenAPI document (openapi.json) from a running
// `jobward serve` started for the purpose ($JOBWARD_BIN, default target/debug/jobward of the
// repository). Run `npm run build` afterwards to regenerate the types.
//
//   JOBWARD_BIN=/path/to/jobward npm run update-openapi
import { writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { READ_TOKEN, startServer } from "../test/harness.mjs";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const server = await startServer();
try {
  const res = await fetch(`${server.api}/api/openapi.json`, {
    headers: { authorization: `Bearer ${READ_TOKEN}` },
  });
  if (!res.ok) throw new Error(`GET /api/openapi.json: ${res.status} ${await res.text()}`);
  const doc = await res.json();
  const out = path.join(root, "openapi.json");
  writeFileSync(out, JSON.stringify(doc, null, 2) + "\n");
  console.log(`wrote ${out} (jobward ${doc.info?.version}, ${Object.keys(doc.paths).length} paths)`);
} finally {
  await server.stop();
}
