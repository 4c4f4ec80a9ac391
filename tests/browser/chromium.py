"""Debian's Chromium driven by Playwright (its own browser download needs the internet), and
what the browser tests share: sizes, where screenshots go, and a pixel comparison."""

from __future__ import annotations

from tests.live_service import ROOT

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
SHOTS = ROOT / "test-output" / "screenshots"
LAPTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}

# Pixels of the explanation canvas against the original drawn at the same size: mean absolute difference.
PIXEL_DIFF = """([canvasSelector, imageSelector]) => {
  const canvas = document.querySelector(canvasSelector);
  const image = document.querySelector(imageSelector);
  const reference = document.createElement("canvas");
  reference.width = canvas.width; reference.height = canvas.height;
  const ctx = reference.getContext("2d");
  ctx.drawImage(image, 0, 0, canvas.width, canvas.height);
  const a = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  const b = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  let sum = 0;
  for (let i = 0; i < a.length; i += 4) sum += Math.abs(a[i] - b[i]) + Math.abs(a[i + 1] - b[i + 1]) + Math.abs(a[i + 2] - b[i + 2]);
  return sum / (a.length / 4 * 3);
}"""


def start_flamingo_maximization(page) -> None:
    """On the jobs view: submit the activation-maximization form for class 130 (flamingo), 6
    steps at 64 px, small enough to end in seconds on a CPU."""
    page.click('[data-jobform="activation-maximization"]')
    form = page.locator("#maximize-form")
    form.locator('[name="target.class"]').fill("130")
    form.locator('[name="steps"]').fill("6")
    form.locator('[name="size"]').fill("64")
    form.locator("button[type=submit]").click()
