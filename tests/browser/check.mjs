// Usage: node check.mjs LAB_URL TOKEN NOTEBOOK OUT_DIR PREFIX
// Opens NOTEBOOK in JupyterLab with Debian's Chromium, runs all cells, waits for them to
// finish, checks that the photo grid and the charts are on the page, and saves screenshots
// named PREFIX-*.png. For a zh-CN notebook it also checks that the Chinese text is drawn
// with real glyphs, not missing-glyph boxes.
import { chromium } from "playwright-core";
import fs from "node:fs";
import path from "node:path";

const [url, token, notebook, outDir, prefix = "lab-00"] = process.argv.slice(2);
const chinese = notebook.startsWith("zh-CN/");
let page;
const fail = async (message) => {
  console.error(`browser check failed: ${message}`);
  if (page) {
    fs.mkdirSync(outDir, { recursive: true });
    await page.screenshot({ path: path.join(outDir, `${prefix}-failure.png`) }).catch(() => {});
  }
  process.exit(1);
};

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
  ],
});
try {
  page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  await page.goto(`${url}/lab/tree/${notebook}?token=${token}`);
  await page.waitForSelector(".jp-Notebook .jp-Cell", { timeout: 120_000 });
  // The kernel is connected once the status bar names it and reports it idle.
  await page.waitForFunction(
    () => /Rust \| Idle/.test(document.querySelector("#jp-main-statusbar")?.innerText ?? ""),
    null,
    { timeout: 300_000, polling: 1000 },
  ).catch(() => fail("the Rust kernel did not become idle"));
  // Run > Run All Cells from the menu bar, as a person would.
  await page.locator(".jp-Notebook").click();
  await page.keyboard.press("Escape");
  await page.click("li.lm-MenuBar-item:has-text('Run')");
  await page.click("li.lm-Menu-item:has-text('Run All Cells')");
  const codeCells = await page.locator(".jp-CodeCell").count();
  // Done when every code cell shows an execution count (no "[*]" and no empty prompt).
  await page.waitForFunction(
    (n) => {
      const prompts = [...document.querySelectorAll(".jp-CodeCell .jp-InputPrompt")].map((p) => p.textContent.trim());
      return prompts.length === n && prompts.every((p) => /^\[\d+\]:$/.test(p));
    },
    codeCells,
    { timeout: 1_500_000, polling: 2000 },
  ).catch(() => fail("the cells did not all finish"));
  const text = await page.locator(".jp-Notebook").innerText();
  if (text.includes("panicked at")) await fail("a cell panicked");
  const match = text.match(/(?:Final test accuracy: |最终测试准确率：)([0-9.]+)%/);
  if (!match) await fail("no final test accuracy printed");
  const pngs = await page.locator(".jp-RenderedImage img").count();
  const svgs = await page.locator(".jp-RenderedSVG").count();
  console.log(`rendered: ${pngs} PNG outputs, ${svgs} SVG outputs; final test accuracy ${match[1]}%`);
  if (pngs < 4) await fail(`expected the photo grid, the gallery, the Grad-CAM maps and the photo as PNG outputs, found ${pngs}`);
  if (svgs < 6) await fail(`expected the three feature-space maps, the curves, confusion matrix and top-k charts as SVG outputs, found ${svgs}`);

  if (chinese) {
    if (!text.includes("使用迁移学习对花卉进行分类")) await fail("the zh-CN title is not on the page");
    // Drawn in the page's own font stack, Chinese must differ from characters no font has
    // (which every browser draws as the same missing-glyph box) and have ink of its own.
    const drawn = await page.evaluate(() => {
      const font = getComputedStyle(document.querySelector(".jp-RenderedMarkdown")).fontFamily;
      const ink = (s) => {
        const canvas = document.createElement("canvas");
        canvas.width = 200; canvas.height = 40;
        const c = canvas.getContext("2d");
        c.font = `24px ${font}`;
        c.fillText(s, 4, 30);
        return [...c.getImageData(0, 0, 200, 40).data].filter((v, i) => i % 4 === 3 && v > 0).length;
      };
      const missing = ink("\u{E000}\u{E001}\u{E002}\u{E003}");
      return { flowers: ink("花卉分类"), other: ink("迁移学习"), missing };
    });
    console.log(`glyph ink: ${JSON.stringify(drawn)}`);
    if (drawn.flowers === drawn.missing || drawn.other === drawn.missing || drawn.flowers === drawn.other || drawn.flowers === 0) {
      await fail(`Chinese text is drawn as missing-glyph boxes: ${JSON.stringify(drawn)}`);
    }
  }

  fs.mkdirSync(outDir, { recursive: true });
  // The training curves and the confusion matrix, in view together.
  await page.locator(".jp-RenderedSVG").first().scrollIntoViewIfNeeded();
  await page.screenshot({ path: path.join(outDir, `${prefix}-plots.png`) });
  await page.locator(".jp-RenderedImage").first().scrollIntoViewIfNeeded();
  await page.screenshot({ path: path.join(outDir, `${prefix}-grid.png`) });
  // The Grad-CAM maps: the third photo figure (after the labelled grid and the mistakes).
  await page.locator(".jp-RenderedImage").nth(2).scrollIntoViewIfNeeded();
  await page.screenshot({ path: path.join(outDir, `${prefix}-grad-cam.png`) });
  // The extraction cell: its progress report is one or a few lines, not a wall.
  const extraction = page.getByText(/Extracted \d+ photos|photos from the cache/).first();
  if ((await extraction.count()) === 0) await fail("the extraction cell printed no summary line");
  await extraction.scrollIntoViewIfNeeded();
  await page.mouse.wheel(0, -200);
  await page.waitForTimeout(300);
  await page.screenshot({ path: path.join(outDir, `${prefix}-features.png`) });
  console.log(`screenshots in ${outDir}`);
} finally {
  await browser.close();
}
