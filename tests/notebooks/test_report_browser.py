"""The smoke chain's report in a real browser (the system's headless Chromium, at a laptop's
1280 px): its sections, every image loaded, no horizontal overflow, and the screenshot of its
first screen that ``fusionkit run`` saved."""

import json

from PIL import Image

from fusionkit.report import browser
from fusionkit.report.html import expected_sections


def test_the_smoke_report_reads_in_a_browser(smoke_run, headless_browser):
    run_dir, proc = smoke_run
    seen = browser.inspect(run_dir / "report.html", headless_browser)
    tasks = json.loads((run_dir / "run.json").read_text())["parameters"]["02_feature_extraction"]["tasks"]
    want = expected_sections(tasks)
    assert [s for s in seen["sections"] if s in want] == want, seen["sections"]
    assert {"interactions", "tuning"} <= set(seen["sections"])  # the smoke profile runs both studies
    figures = {r["key"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
               if r["kind"] == "figure"}  # fmt: skip
    assert seen["images"] >= len(figures) + 1  # every logged figure, the forest plot and the samples' images
    assert seen["broken"] == []
    assert seen["inner_width"] == browser.WIDTH
    assert seen["scroll_width"] <= seen["inner_width"], f"wider than the window: {seen['wide']}"

    shot = run_dir / browser.SCREENSHOT  # saved by `fusionkit run`
    assert f"screenshot of the report's first screen: {shot}" in proc.stdout
    with Image.open(shot) as im:
        assert im.size == (browser.WIDTH, browser.HEIGHT)
        assert len(im.convert("L").getcolors(1 << 16) or range(1 << 16)) > 8  # not a blank page


def test_the_browser_check_sees_broken_images_and_overflow(tmp_path, headless_browser):
    page = tmp_path / "bad.html"
    page.write_text(
        "<!doctype html><html><body style='margin:0'><section id='only'><h2>only</h2>"
        "<img alt='broken' src='data:image/png;base64,AAAA'><div style='width:2000px'>wide</div></section></body></html>"
    )
    seen = browser.inspect(page, headless_browser)
    assert seen["sections"] == ["only"]
    assert seen["broken"] == ["broken"]
    assert seen["scroll_width"] > seen["inner_width"] and seen["wide"]
