// Opens the admin dashboard in Debian's chromium, connects a WebSocket client through the
// balancer from another page (and echoes one message over it), drains a backend through the admin API, stops another
// backend, and reports what the dashboard showed (and any Content-Security-Policy
// violation), as JSON.
// Usage: node dashboard.mjs DASHBOARD_URL WS_URL SCREENSHOT_PATH TOKEN DRAIN_ID STOP_ID STOP_PID
import { launchChromium } from "./launch.mjs";

const [dashboardUrl, wsUrl, screenshot, token, drainId, stopId, stopPid] = process.argv.slice(2);
const browser = await launchChromium();
try {
  const page = await browser.newPage();
  const dialogs = [];
  const console_ = [];
  page.on("dialog", async (d) => { dialogs.push(d.message()); await d.dismiss(); });
  page.on("console", (m) => { if (m.type() === "error" || m.type() === "warning") console_.push(m.text()); });
  page.on("pageerror", (e) => console_.push(String(e)));
  // Init scripts run outside the page's policy: this only records what the policy blocks.
  await page.addInitScript(() => {
    window.__violations = [];
    document.addEventListener("securitypolicyviolation", (e) => {
      window.__violations.push(e.violatedDirective + " " + (e.blockedURI || "inline"));
    });
  });
  const response = await page.goto(dashboardUrl);
  const policy = response.headers()["content-security-policy"] || "";
  await page.waitForFunction(() => document.querySelectorAll("#backends tr").length === 3,
                             null, { timeout: 15000 });
  const pools = await page.locator("#backends td.pool").allTextContents();
  const total = async () => page.evaluate(() =>
    [...document.querySelectorAll("#backends td.count")].reduce((n, td) => n + Number(td.textContent), 0));
  const before = await total();
  const client = await browser.newPage();
  await client.goto(new URL("/healthz", dashboardUrl).href);  // any page of ours, no CSP
  await client.evaluate((url) => new Promise((resolve, reject) => {
    window.ws = new WebSocket(url);
    window.ws.onopen = resolve;
    window.ws.onerror = reject;
  }), wsUrl);
  await page.waitForFunction((n) =>
    [...document.querySelectorAll("#backends td.count")].reduce((s, td) => s + Number(td.textContent), 0) > n,
    before, { timeout: 15000 });
  const after = await total();
  // A message echoed through the balancer shows in its backend's traffic row, timed.
  await client.evaluate(() => new Promise((resolve) => {
    window.ws.onmessage = resolve;
    window.ws.send("traffic");
  }));
  await page.waitForFunction(() => [...document.querySelectorAll("#traffic tr")].some(
    (r) => r.children[5].textContent === "1"), null, { timeout: 15000 });
  const traffic = await page.locator("#traffic tr").evaluateAll((rows) => rows.map((r) =>
    [r.getAttribute("data-backend"), ...[...r.children].slice(1, 9).map((td) => td.textContent)]));
  const migrations = await page.locator("#migrations").textContent();
  await page.waitForFunction(() => document.querySelectorAll("#pods tr").length === 3, null,
                             { timeout: 15000 });
  const podNames = await page.locator("#pods td.pod-name").allTextContents();
  const images = await page.evaluate(() => document.querySelectorAll("img").length);
  const backends = await page.locator("#backends tr").evaluateAll(
    (rows) => rows.map((r) => r.getAttribute("data-backend")));

  // An operator drains one backend through the API ...
  const drained = await client.evaluate(async ([id, bearer]) => {
    const r = await fetch(`/api/backends/${id}/drain`,
                          { method: "POST", headers: { authorization: `Bearer ${bearer}` } });
    return r.status;
  }, [drainId, token]);
  await page.waitForFunction((id) => [...document.querySelectorAll("#events li")].some(
    (li) => li.textContent.includes(`/api/backends/${id}/drain`)), drainId, { timeout: 15000 });
  // ... and another backend dies: its pod's row is shown down.
  process.kill(Number(stopPid));
  await page.waitForFunction((id) => {
    const row = document.querySelector(`#pods tr[data-backend="${id}"]`);
    return row && row.classList.contains("down");
  }, stopId, { timeout: 15000 });
  const podStates = await page.locator("#pods tr").evaluateAll((rows) => rows.map((r) =>
    [r.getAttribute("data-backend"), r.querySelector(".state").textContent, r.className]));
  const states = await page.locator("#backends tr").evaluateAll((rows) => rows.map((r) =>
    [r.getAttribute("data-backend"), r.querySelector(".state").textContent]));
  const events = await page.locator("#events li").allTextContents();
  await page.screenshot({ path: screenshot, fullPage: true });

  // The dashboard ran under its policy with no violation; an inline script is refused.
  const violations = await page.evaluate(() => window.__violations.slice());
  const consoleBefore = console_.slice();
  const inlineRan = await page.evaluate(() => {
    const s = document.createElement("script");
    s.textContent = "window.__inline = true;";
    document.body.appendChild(s);  // an allowed inline script would have run by now
    return window.__inline === true;
  });
  await page.waitForFunction((n) => window.__violations.length > n, violations.length,
                             { timeout: 15000 });
  const probeViolations = await page.evaluate(() => window.__violations.slice());
  console.log(JSON.stringify({
    before, after, traffic, migrations, podNames, images, dialogs, backends, pools, drained, podStates, states,
    events, policy, violations, inlineRan, probeViolations, console: consoleBefore,
  }));
} finally {
  await browser.close();
}
