// Opens a Socket.IO page served through the balancer in Debian's chromium; reports JSON.
// Usage: node socketio.mjs PAGE_URL SCREENSHOT_PATH
import { launchChromium } from "./launch.mjs";

const [pageUrl, screenshot] = process.argv.slice(2);
const browser = await launchChromium();
try {
  const page = await browser.newPage();
  await page.goto(pageUrl);
  await page.waitForFunction(() => window.report !== null, null, { timeout: 20000 });
  const report = await page.evaluate(() => window.report);
  await page.screenshot({ path: screenshot });
  console.log(JSON.stringify(report));
} finally {
  await browser.close();
}
