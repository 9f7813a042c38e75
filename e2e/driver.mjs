// Drives the test page in Debian's headless Chromium through playwright-core
// and prints one JSON report on stdout: per scenario, what the page returned,
// plus every console error and failed request seen.
//
//   node e2e/driver.mjs --page http://127.0.0.1:PAGE/ --api http://127.0.0.1:API \
//     [--artifacts e2e/artifacts] [--scenario apollo ...] [--chromium /usr/bin/chromium]
//
// A scenario that fails leaves a screenshot, artifacts/<scenario>.png.
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const { values: options } = parseArgs({
  options: {
    page: { type: "string" },
    api: { type: "string" },
    artifacts: { type: "string", default: path.join(here, "artifacts") },
    scenario: { type: "string", multiple: true },
    chromium: { type: "string", default: "/usr/bin/chromium" },
    "timeout-ms": { type: "string", default: "60000" },
  },
});
const timeoutMs = Number(options["timeout-ms"]);

// Flags for a container without a GPU, a sandbox, or the wish to phone home.
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

const userDataDir = mkdtempSync(path.join(os.tmpdir(), "depot-e2e-chromium-"));
const report = { scenarios: {}, console: [], failedRequests: [] };
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: options.chromium,
  args: CHROMIUM_ARGS,
  headless: true,
  viewport: { width: 1000, height: 1400 },
});
try {
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(timeoutMs);
  page.on("console", (message) => {
    // A failed load's message names its status, and its location the URL.
    const where = message.location().url;
    if (message.type() === "error") report.console.push(where ? `${message.text()} @ ${where}` : message.text());
  });
  page.on("pageerror", (error) => report.console.push(`uncaught: ${error.stack ?? error}`));
  page.on("requestfailed", (request) =>
    report.failedRequests.push(`${request.method()} ${request.url()}: ${request.failure()?.errorText}`),
  );
  const url = new URL(options.page);
  url.searchParams.set("api", options.api);
  await page.goto(url.href);
  await page.waitForFunction(() => window.depotE2E !== undefined);
  const names = options.scenario ?? (await page.evaluate(() => window.depotE2E.names));
  for (const name of names) {
    const started = performance.now();
    let timer;
    const result = await Promise.race([
      page.evaluate((scenario) => window.depotE2E.run(scenario), name),
      new Promise((resolve) => {
        timer = setTimeout(() => resolve({ ok: false, error: `no answer within ${timeoutMs} ms` }), timeoutMs);
      }),
    ]);
    clearTimeout(timer);
    result.seconds = Math.round(performance.now() - started) / 1000;
    if (!result.ok) {
      mkdirSync(options.artifacts, { recursive: true });
      result.screenshot = path.join(options.artifacts, `${name}.png`);
      await page.screenshot({ path: result.screenshot, fullPage: true });
    }
    report.scenarios[name] = result;
  }
} finally {
  await context.close();
  rmSync(userDataDir, { recursive: true, force: true });
}
process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
