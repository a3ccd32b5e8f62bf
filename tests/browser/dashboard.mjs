// Opens the admin dashboard in Debian's chromium, connects a WebSocket client through the
// balancer from another page, and reports what the dashboard showed, as JSON.
// Usage: node dashboard.mjs DASHBOARD_URL WS_URL SCREENSHOT_PATH
import { launchChromium } from "./launch.mjs";

const [dashboardUrl, wsUrl, screenshot] = process.argv.slice(2);
const browser = await launchChromium();
try {
  const page = await browser.newPage();
  const dialogs = [];
  page.on("dialog", async (d) => { dialogs.push(d.message()); await d.dismiss(); });
  await page.goto(dashboardUrl);
  await page.waitForFunction(() => document.querySelectorAll("#backends tr").length === 3,
                             null, { timeout: 15000 });
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
  await page.waitForFunction(() => document.querySelectorAll("#pods tr").length === 3, null,
                             { timeout: 15000 });
  const podNames = await page.locator("#pods td.pod-name").allTextContents();
  const images = await page.evaluate(() => document.querySelectorAll("img").length);
  const backends = await page.locator("#backends tr").evaluateAll(
    (rows) => rows.map((r) => r.getAttribute("data-backend")));
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(JSON.stringify({ before, after, podNames, images, dialogs, backends }));
} finally {
  await browser.close();
}
