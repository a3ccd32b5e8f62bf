// Opens the demo chat page in Debian's chromium, talks through the balancer, reports JSON.
// Usage: node chat.mjs PAGE_URL SCREENSHOT_PATH
import { launchChromium } from "./launch.mjs";

const [pageUrl, screenshot] = process.argv.slice(2);
const browser = await launchChromium();
try {
  const page = await browser.newPage();
  const frames = [];
  page.on("websocket", (ws) => {
    ws.on("framereceived", (f) => frames.push(String(f.payload)));
  });
  await page.goto(pageUrl);
  await page.waitForSelector("#status.open", { timeout: 10000 });
  const greeting = await page.locator("#output div").first().textContent({ timeout: 10000 });
  await page.fill("#message", "hello from chromium");
  await page.click("#sendBtn");
  await page.waitForFunction(
    () => [...document.querySelectorAll("#output div")].some((d) => d.textContent.endsWith(": hello from chromium")),
    null, { timeout: 10000 });
  const lines = await page.locator("#output div").allTextContents();
  await page.screenshot({ path: screenshot });
  console.log(JSON.stringify({ greeting, lines, frames }));
} finally {
  await browser.close();
}
