// Drives POST /v1/embeddings and GET /v1/models of `vlmo serve` with the official `openai`
// package as it comes from npm (pinned in package-lock.json), on the retrieval model and gallery a
// demo wrote: its text embeddings equal `vlmo embed`'s within 1e-6, image items (an uploaded data:
// URL, a collection id) equal the CLI's embedding of the file, "base64" and "float" decode to the
// same numbers, and the client reads the server's errors as the API's.
//
// usage: node openai_test.mjs VLMO DEMO_DIR WORK_DIR
// Exit 77 (skipped) when the openai package is missing, unless VLMO_REQUIRE_OPENAI=1.
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";

const [VLMO, DEMO, WORK] = process.argv.slice(2);
let OpenAI;
try {
  ({ default: OpenAI } = await import("openai"));
} catch {
  console.log("openai test: the openai package is not installed (npm ci in tests/openai; scripts/test.sh does)");
  process.exit(process.env.VLMO_REQUIRE_OPENAI === "1" ? 1 : 77);
}
const MODEL = `${DEMO}/finetune-retrieval.safetensors`;
const failures = [];
const check = (cond, what) => {
  console.log(`${cond ? "ok   " : "FAIL "} ${what}`);
  if (!cond) failures.push(what);
};

// The rows of the "embeddings" tensor of a safetensors file `vlmo embed` wrote (read by hand).
function readEmbeddings(file) {
  const raw = fs.readFileSync(file);
  const n = Number(raw.readBigUInt64LE(0));
  const header = JSON.parse(raw.subarray(8, 8 + n).toString("utf8"));
  const t = header.embeddings;
  if (t.dtype !== "F32") throw new Error(`${file}: embeddings are ${t.dtype}`);
  const [begin] = t.data_offsets;
  const [rows, dim] = t.shape;
  const out = [];
  for (let r = 0; r < rows; ++r) {
    const row = [];
    for (let k = 0; k < dim; ++k) row.push(raw.readFloatLE(8 + n + begin + 4 * (r * dim + k)));
    out.push(row);
  }
  return out;
}
const maxDiff = (a, b) => (a.length !== b.length ? Infinity : Math.max(...a.map((x, i) => Math.abs(x - b[i]))));
const run = (args) => {
  const r = spawnSync(VLMO, args, { encoding: "utf8", env: { ...process.env, OMP_NUM_THREADS: "1" } });
  if (r.status !== 0) throw new Error(`vlmo ${args.join(" ")} failed: ${r.stderr}`);
};

fs.mkdirSync(WORK, { recursive: true });
// What the CLI makes of the same texts and image.
const texts = ["a red circle", "a small blue square on the left of a green triangle", "two shapes", "Ünïcode — a yellow star ✓"];
fs.writeFileSync(path.join(WORK, "texts.jsonl"), texts.map((text) => JSON.stringify({ text })).join("\n") + "\n");
run(["embed", "--model", MODEL, "--input", path.join(WORK, "texts.jsonl"), "--out", path.join(WORK, "texts.safetensors")]);
const cliTexts = readEmbeddings(path.join(WORK, "texts.safetensors"));
const imageFile = `${DEMO}/gallery/test-002.png`;
run(["embed", "--model", MODEL, "--out", path.join(WORK, "image.safetensors"), imageFile]);
const cliImage = readEmbeddings(path.join(WORK, "image.safetensors"))[0];

const portFile = path.join(WORK, "openai.port");
fs.rmSync(portFile, { force: true });
const log = fs.openSync(path.join(WORK, "openai-server.log"), "w");
const server = spawn(VLMO, ["serve", "--model", MODEL, "--index", `${DEMO}/gallery.safetensors`, "--port", "0", "--port-file", portFile],
  { stdio: ["ignore", log, log], env: { ...process.env, OMP_NUM_THREADS: "1" } });
const deadline = Date.now() + 60000;
while (!fs.existsSync(portFile)) {
  if (server.exitCode !== null || Date.now() > deadline) {
    console.log(fs.readFileSync(path.join(WORK, "openai-server.log"), "utf8"));
    throw new Error("vlmo serve did not start");
  }
  await new Promise((r) => setTimeout(r, 100));
}
const port = fs.readFileSync(portFile, "utf8").trim();
try {
  const client = new OpenAI({ apiKey: "not-checked", baseURL: `http://127.0.0.1:${port}/v1`, maxRetries: 0, timeout: 60000 });
  const models = await client.models.list();
  const ids = models.data.map((m) => m.id);
  check(ids.includes("finetune-retrieval.safetensors") && models.data.every((m) => m.object === "model"), `models.list(): ${ids.join(", ")}`);
  const model = "finetune-retrieval.safetensors";

  const float = await client.embeddings.create({ model, input: texts, encoding_format: "float" });
  check(float.object === "list" && float.model === model && float.data.length === texts.length &&
    float.data.every((d, i) => d.object === "embedding" && d.index === i), `float: ${float.data.length} embeddings in order`);
  const worst = Math.max(...float.data.map((d, i) => maxDiff(d.embedding, cliTexts[i])));
  check(worst <= 1e-6, `text embeddings = vlmo embed's (largest difference ${worst.toExponential(2)}, at most 1e-6)`);
  check(float.usage.prompt_tokens > texts.length && float.usage.total_tokens === float.usage.prompt_tokens,
    `usage: ${float.usage.prompt_tokens} prompt tokens`);

  const b64 = await client.embeddings.create({ model, input: texts, encoding_format: "base64" });
  const decoded = b64.data.map((d) => {
    const bytes = Buffer.from(d.embedding, "base64");
    return Array.from({ length: bytes.length / 4 }, (_, k) => bytes.readFloatLE(4 * k));
  });
  check(b64.data.every((d) => typeof d.embedding === "string") &&
    decoded.every((row, i) => maxDiff(row, float.data[i].embedding) === 0),
    "base64 decodes to exactly the float answer");
  const sdk = await client.embeddings.create({ model, input: texts });  // the SDK asks for base64 and decodes it itself
  check(sdk.data.every((d, i) => maxDiff(Array.from(d.embedding), float.data[i].embedding) === 0),
    "the SDK's default (base64, decoded by the SDK) = float");
  const one = await client.embeddings.create({ model, input: texts[0], encoding_format: "float" });
  check(one.data.length === 1 && maxDiff(one.data[0].embedding, cliTexts[0]) <= 1e-6, "a single string input");

  const dataUrl = "data:image/png;base64," + fs.readFileSync(imageFile).toString("base64");
  const images = await client.embeddings.create({ model, input: [{ image: dataUrl }, { image: "gallery/test-002.png" }, texts[1]],
    encoding_format: "float" });
  check(maxDiff(images.data[0].embedding, cliImage) <= 1e-6 && maxDiff(images.data[1].embedding, cliImage) <= 1e-6,
    `image items (data: URL, collection id) = vlmo embed of the file (${maxDiff(images.data[0].embedding, cliImage).toExponential(2)})`);
  check(maxDiff(images.data[2].embedding, cliTexts[1]) <= 1e-6, "a text among image items");

  const refused = async (body, status, want) => {
    try {
      await client.embeddings.create(body);
      check(false, `${JSON.stringify(body).slice(0, 60)}: not refused`);
    } catch (e) {
      check(e instanceof OpenAI.APIError && e.status === status && want(e),
        `${JSON.stringify(body).slice(0, 70)} -> ${e.status} ${e.error?.type}/${e.code ?? e.param}: ${e.message.slice(0, 80)}`);
    }
  };
  await refused({ model: "text-embedding-3-small", input: "x" }, 404, (e) => e instanceof OpenAI.NotFoundError && e.code === "model_not_found");
  await refused({ model, input: [] }, 400, (e) => e instanceof OpenAI.BadRequestError && e.param === "input");
  await refused({ model, input: [[101, 102]] }, 400, (e) => e.param === "input" && e.message.includes("token arrays"));
  await refused({ model, input: [{ image: "/etc/passwd" }] }, 400, (e) => e.param === "input" && e.message.includes("input[0]"));
} finally {
  server.kill("SIGTERM");
}
await new Promise((r) => server.on("exit", r));
check(server.exitCode === 0, `server stopped cleanly (exit ${server.exitCode})`);
if (failures.length) {
  console.log(`${failures.length} openai checks failed`);
  process.exit(1);
}
