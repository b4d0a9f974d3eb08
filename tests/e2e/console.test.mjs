// The web console end to end, in Debian's headless Chromium driven by playwright-core: log in
// with the token, create a VM from recipes/rescue with the form, see it turn running, type
// `echo hi` into its console and see `hi` come back, take a screenshot, stop it.
//
// Run by crates/cli/tests/integration/web.rs, which starts `kiln serve` and cleans up after;
// it passes KILN_URL, KILN_TOKEN, KILN_VM and KILN_SCREENSHOT.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { chromium } from "playwright-core";

const need = (k) => {
  const v = process.env[k];
  assert.ok(v, `${k} is not set (this test is run by the Rust integration test web::browser_*)`);
  return v;
};

const terminalLines = (page) =>
  page.evaluate(() => {
    const b = window.kilnTerm.buffer.active;
    const out = [];
    for (let i = 0; i < b.length; i++) out.push(b.getLine(i).translateToString(true));
    return out;
  });

async function waitForLines(page, pred, what, timeout = 60_000) {
  const deadline = Date.now() + timeout;
  let lines = [];
  while (Date.now() < deadline) {
    lines = await terminalLines(page);
    if (pred(lines)) return lines;
    await page.waitForTimeout(100); // polling the terminal's buffer, not a synchronisation sleep
  }
  assert.fail(`timed out waiting for ${what}; the terminal shows:\n${lines.join("\n")}`);
}

test("create a rescue VM from the page, use its console, stop it", { timeout: 300_000 }, async () => {
  const url = need("KILN_URL");
  const token = need("KILN_TOKEN");
  const name = need("KILN_VM");
  const shot = need("KILN_SCREENSHOT");
  const profile = mkdtempSync(join(tmpdir(), "kiln-e2e-"));
  // A fresh profile (--user-data-dir) each run.
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    viewport: { width: 1500, height: 900 },
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
  try {
    const page = browser.pages()[0] || await browser.newPage();
    const foreign = [];
    page.on("request", (r) => {
      const u = r.url();
      if (!u.startsWith(url) && !u.startsWith(url.replace("http:", "ws:")) && !u.startsWith("data:")) foreign.push(u);
    });
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));

    // Without the cookie, the page sends us to the login form.
    await page.goto(`${url}/`);
    assert.match(page.url(), /\/login$/);
    await page.fill("#token", token);
    await Promise.all([page.waitForURL(`${url}/`), page.click("button[type=submit]")]);
    await page.waitForSelector("#live.on"); // the event stream is connected

    // Create from the form.
    await page.waitForSelector('#source option[value="recipe:rescue"]', { state: "attached" });
    await page.selectOption("#source", "recipe:rescue");
    await page.fill("#name", name);
    await page.fill("#memory", "96");
    await page.click("#create-button");
    await page.waitForSelector(`tr[data-name="${name}"]`);
    await page.waitForSelector(`tr[data-name="${name}"][data-state="running"]`, { timeout: 180_000 });

    // The console attaches by itself once the VM runs.
    await page.waitForSelector(`body[data-console="${name}"]`);
    await waitForLines(page, (l) => l.some((x) => x.includes("rescue#")), "the rescue prompt");
    await page.click("#terminal");
    await page.keyboard.type("echo hi");
    await page.keyboard.press("Enter");
    await waitForLines(page, (l) => l.some((x) => x.trim() === "hi"), "`hi` from the guest");
    // A sample or two for the sparklines, then the picture.
    await page.waitForSelector(`tr[data-name="${name}"] .spark-label:has-text("%")`, { timeout: 20_000 });
    mkdirSync(dirname(shot), { recursive: true });
    await page.screenshot({ path: shot, fullPage: true });

    // Stop: the row leaves the running state (or the table) and the console says so.
    await page.click(`tr[data-name="${name}"] button[data-action="stop"]`);
    // (The page's CSP forbids eval, so the waits are selectors, not functions.)
    await page.waitForSelector(`tr[data-name="${name}"][data-state="running"]`, { state: "detached", timeout: 60_000 });
    await page.waitForSelector(`tr[data-name="${name}"][data-state="starting"]`, { state: "detached" });
    await waitForLines(page, (l) => l.some((x) => x.includes("[console closed]") || x.includes("[disconnected]")),
      "the console to close");

    assert.deepEqual(foreign, [], "the page loaded something from elsewhere");
    assert.deepEqual(errors, [], "the page threw");
  } finally {
    await browser.close();
    rmSync(profile, { recursive: true, force: true });
  }
});
