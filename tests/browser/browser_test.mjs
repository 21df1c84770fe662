// Drives headless Chromium (Debian's /usr/bin/chromium, through playwright-core) through the
// page of `vlmo serve` on the models and gallery a demo wrote: a text search, a VQA question on a
// picked result and on an uploaded file, a caption score, and an error shown for empty input.
// What the page shows is checked against the server's JSON answers. The screenshot is kept at
// WORK/serve-page.png, and also written to SCREENSHOT when given: on the models of a full
// `vlmo demo` that is how docs/serve-page.png is made (README), and the run then also checks that
// the page shows what trained models should, by the gallery's captions: a green circle first,
// "green" for the colour of the shape on its right, and a caption of that scene scored above 50 %.
//
// usage: node browser_test.mjs VLMO DEMO_DIR WORK_DIR [SCREENSHOT]
// Exit 77 (skipped) when Chromium or playwright-core is missing, unless VLMO_REQUIRE_BROWSER=1.
import { spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";

const [VLMO, DEMO, WORK, SCREENSHOT] = process.argv.slice(2);
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const skip = (why) => {
  console.log(`browser test: ${why}`);
  process.exit(process.env.VLMO_REQUIRE_BROWSER === "1" ? 1 : 77);
};
if (!fs.existsSync(CHROMIUM)) skip(`${CHROMIUM} not found (apt install chromium; scripts/test.sh does)`);
let chromium;
try {
  ({ chromium } = await import("playwright-core"));
} catch {
  skip("playwright-core not installed (npm ci in tests/browser; scripts/test.sh does)");
}

fs.mkdirSync(WORK, { recursive: true });
const portFile = path.join(WORK, "browser.port");
fs.rmSync(portFile, { force: true });
const log = fs.openSync(path.join(WORK, "browser-server.log"), "w");
const server = spawn(VLMO, ["serve", "--model", `${DEMO}/finetune-retrieval.safetensors`, "--vqa-model", `${DEMO}/finetune-vqa.safetensors`,
  "--index", `${DEMO}/gallery.safetensors`, "--port", "0", "--port-file", portFile], { stdio: ["ignore", log, log] });
const failures = [];
const check = (cond, what) => {
  console.log(`${cond ? "ok   " : "FAIL "} ${what}`);
  if (!cond) failures.push(what);
};
const deadline = Date.now() + 60000;
while (!fs.existsSync(portFile)) {
  if (server.exitCode !== null || Date.now() > deadline) {
    console.log(fs.readFileSync(path.join(WORK, "browser-server.log"), "utf8"));
    throw new Error("vlmo serve did not start");
  }
  await new Promise((r) => setTimeout(r, 100));
}
const url = `http://127.0.0.1:${fs.readFileSync(portFile, "utf8").trim()}`;
const api = async (endpoint, body) => (await fetch(url + endpoint, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) })).json();
const pct = (p) => (100 * p).toFixed(1) + " %";

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
  timeout: 60000,
});
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 1000 } });
  page.setDefaultTimeout(30000);
  const consoleErrors = [];
  page.on("pageerror", (e) => consoleErrors.push(String(e)));
  await page.goto(url + "/");
  await page.waitForFunction(() => document.getElementById("model-info").textContent.includes("collection"));
  const info = await page.textContent("#model-info");
  check(info.includes("gallery.safetensors") && info.includes("100 images"), `header names the model and collection: ${info}`);

  // Empty input: the page says what to do, and asks the server nothing.
  await page.click("#search-btn");
  check(await page.isVisible("#error"), `empty search shows: ${await page.textContent("#error")}`);

  // A text search: the thumbnails shown are the server's top hits, in order, with their scores.
  const query = "a green circle";
  await page.fill("#query", query);
  await page.fill("#top-k", "6");
  await page.click("#search-btn");
  await page.waitForFunction(() => document.querySelectorAll("#results .result").length === 6);
  const shown = await page.$$eval("#results .result", (cells) => cells.map((c) => ({ id: c.dataset.id, score: c.querySelector(".score").textContent })));
  const want = await api("/api/search", { text: query, top_k: 6 });
  check(JSON.stringify(shown.map((s) => s.id)) === JSON.stringify(want.results.map((r) => r.id)), `search shows the server's top 6 in order (${shown[0].id} first)`);
  check(shown.every((s, i) => s.score === `${i + 1}. ${want.results[i].score.toFixed(3)}`), `scores shown: ${shown.map((s) => s.score).join(", ")}`);
  await page.waitForFunction(() => [...document.querySelectorAll("#results img")].every((i) => i.complete && i.naturalWidth > 0));
  check(true, "every thumbnail loaded from /api/image");

  // A VQA question on the first result.
  await page.click("#results .result >> nth=0");
  const question = "what color is the shape on the right?";
  await page.fill("#question", question);
  await page.click("#ask-btn");
  await page.waitForSelector("#answers li");
  const answers = await page.$$eval("#answers li", (lis) => lis.map((li) => [li.querySelector(".answer").textContent, li.querySelector(".prob").textContent]));
  const wantVqa = await api("/api/vqa", { image: shown[0].id, question });
  check(JSON.stringify(answers) === JSON.stringify(wantVqa.answers.map((a) => [a.answer, pct(a.probability)])),
    `VQA answers shown = the server's: ${answers.map((a) => a.join(" ")).join(", ")}`);

  // A caption (in the demo world's form: two shapes with their places) scored against the picked image.
  const caption = "a green circle on the right and a green square in the middle";
  await page.fill("#caption", caption);
  await page.click("#itm-btn");
  await page.waitForFunction(() => document.getElementById("itm-result").textContent.includes("match probability"));
  const itm = await page.textContent("#itm-result");
  const wantItm = await api("/api/itm", { image: shown[0].id, text: caption });
  check(itm === `match probability ${pct(wantItm.match_probability)}`, `ITM shown: ${itm}`);

  // The same image uploaded from disk gets the same answers.
  await page.setInputFiles("#upload", path.join(DEMO, shown[0].id));
  await page.waitForFunction(() => document.getElementById("picked-name").textContent.endsWith(".png") && document.getElementById("answers").children.length === 0);
  await page.click("#ask-btn");
  await page.waitForSelector("#answers li");
  const uploaded = await page.$$eval("#answers li", (lis) => lis.map((li) => [li.querySelector(".answer").textContent, li.querySelector(".prob").textContent]));
  check(JSON.stringify(uploaded) === JSON.stringify(answers), "an uploaded copy of the image gets the same answers");
  await page.click("#itm-btn");
  await page.waitForFunction(() => document.getElementById("itm-result").textContent.includes("match probability"));
  check(await page.textContent("#itm-result") === itm, "and the same caption score");

  const shot = path.join(WORK, "serve-page.png");
  await page.screenshot({ path: shot, fullPage: true });
  check(fs.statSync(shot).size > 10000, `screenshot kept: ${shot}`);
  if (SCREENSHOT) {
    // The page as users first see it, from trained models, checked against the gallery's
    // captions: the first hit has a green circle, and the shape on its right is green.
    const captions = JSON.parse(fs.readFileSync(path.join(DEMO, "gallery", "test.json"), "utf8")).images;
    const said = (id) => captions.find((im) => id.endsWith("/" + im.filename)).sentences.map((t) => t.raw.toLowerCase());
    const hits = shown.map((s) => said(s.id).some((t) => /\bgreen circle\b/.test(t)));
    check(hits[0], `the first hit for "${query}" has a green circle: ${said(shown[0].id)[0]} (of the 6: ${hits.filter(Boolean).length})`);
    const right = said(shown[0].id).some((t) => /\bgreen (circle|square|triangle)( placed)? on the right\b/.test(t));
    check(answers[0][0] === "green" && right, `VQA's top answer to "${question}" on it: ${answers[0].join(" ")}`);
    const scene = said(shown[0].id).some((t) => /green circle.* on the right.*green square.* (in the middle|in the center)/.test(t));
    check(scene && wantItm.match_probability > 0.5, `"${caption}" describes it (by its captions) and scores ${itm}`);
    fs.copyFileSync(shot, SCREENSHOT);
    console.log(`screenshot written to ${SCREENSHOT}`);
  }
  check(consoleErrors.length === 0, `no script errors on the page ${consoleErrors.join("; ")}`);
} finally {
  await browser.close();
  server.kill("SIGTERM");
}
await new Promise((r) => server.on("exit", r));
check(server.exitCode === 0, `server stopped cleanly (exit ${server.exitCode})`);
if (failures.length) {
  console.log(`${failures.length} browser checks failed`);
  process.exit(1);
}
