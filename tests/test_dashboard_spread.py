"""The spread band figure (dashboard/spread.py): its traces as data, and drawn by plotly.js in
Chromium (the band is filled, outlier labels are red, inside the chart, not clipped)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from graphviz_autograd.dashboard.spread import spread_figure

STEPS = [0, 10, 20, 30]
SPREAD = (STEPS, [1.0, 0.9, 0.8, 0.7], [1.2, 1.1, 5.0, 0.9], [1.5, 1.3, 18.0, 1.1], [3, 1, 0, 2],
          [2, 0, 5, 1])


def test_band_mean_and_outliers_as_traces():
    fig = spread_figure(*SPREAD, outliers=[(20, 5, 18.0, "loss <b>18</b> is far above"),
                                           (30, 6, math.nan, "grad NaN")], title="loss over 8 ranks", step=20)
    hi, lo, mean, marks = fig["data"]
    assert hi["y"] == [1.5, 1.3, 18.0, 1.1] and lo["y"] == [1.0, 0.9, 0.8, 0.7]
    assert lo["fill"] == "tonexty" and "fill" not in hi         # the band: from max down to min
    assert hi["customdata"] == ["2", "0", "5", "1"] and lo["customdata"] == ["3", "1", "0", "2"]
    assert "rank %{customdata}" in hi["hovertemplate"] and mean["y"] == [1.2, 1.1, 5.0, 0.9]
    assert marks["x"] == [20, 30] and marks["y"] == [18.0, 18.0]      # NaN drawn at the top
    assert marks["text"] == ["rank 5", "rank 6 (nan)"] and marks["customdata"] == [[20, 5], [30, 6]]
    assert marks["hovertext"][0] == "loss &lt;b&gt;18&lt;/b&gt; is far above"
    assert fig["layout"]["shapes"][0]["x0"] == 20 and fig["layout"]["yaxis"].get("type") is None
    json.dumps(fig, allow_nan=False)                            # no NaN reaches the browser


def test_gaps_log_axis_and_empty():
    fig = spread_figure([0, 1, 2], [1e-6, None, 1e-5], [1e-3, math.inf, 1e-2], [1.0, math.nan, 2.0],
                        [0, None, 1], [1, 2, 0])
    assert fig["data"][0]["y"] == [1.0, None, 2.0] and fig["data"][2]["y"] == [1e-3, None, 1e-2]
    assert fig["data"][1]["customdata"] == ["0", "", "1"] and len(fig["data"]) == 3
    assert fig["layout"]["yaxis"]["type"] == "log"
    assert "type" not in spread_figure(*SPREAD, log=False)["layout"]["yaxis"]
    empty = spread_figure([], [], [], [], [], [])
    assert empty["data"] == [] and "ranks='gather'" in empty["layout"]["annotations"][0]["text"]


@pytest.mark.slow
def test_the_band_as_drawn_in_chromium(tmp_path):
    import plotly
    from playwright.sync_api import sync_playwright

    fig = spread_figure(*SPREAD, outliers=[(20, 5, 18.0, "loss 18 is far above"), (30, 1, 1.1, "x")],
                        title="loss over 8 ranks", step=20)
    js = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    page_file = tmp_path / "spread.html"
    page_file.write_text(f"<html><head><script src='{js.as_uri()}'></script></head><body>"
                         "<div id='f' style='width:600px;height:320px'></div><script>"
                         f"Plotly.newPlot('f', {json.dumps(fig['data'])}, {json.dumps(fig['layout'])});"
                         "</script></body></html>")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium",
                                    args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 640, "height": 360})
            page.goto(page_file.as_uri())
            page.wait_for_selector(".textpoint text")
            seen = page.evaluate("""() => {
                const svg = document.querySelector('.main-svg').getBoundingClientRect();
                const plotArea = document.querySelector('.nsewdrag').getBoundingClientRect();
                const visibleRight = (t) => {      // the svg's edge, or the plot area's when clipped
                    for (let el = t; el && el.getAttribute; el = el.parentNode) {
                        if (el.getAttribute('clip-path')) return Math.min(svg.right, plotArea.right);
                    }
                    return svg.right; };
                const labels = [...document.querySelectorAll('.textpoint text')].map(t => {
                    const r = t.getBoundingClientRect();
                    return {text: t.textContent, fill: getComputedStyle(t).fill, right: r.right,
                            visible: visibleRight(t), size: parseFloat(getComputedStyle(t).fontSize)}; });
                const fills = [...document.querySelectorAll('.js-fill')].map(f => f.getAttribute('d') || '');
                return {labels, fills, svgRight: svg.right,
                        title: document.querySelector('.gtitle').textContent};
            }""")
            page.screenshot(path=str(tmp_path / "spread.png"))
        finally:
            browser.close()
    assert [l["text"] for l in seen["labels"]] == ["rank 5", "rank 1"]
    for label in seen["labels"]:
        assert label["fill"] == "rgb(214, 39, 40)" and label["size"] >= 11
        assert label["right"] <= label["visible"]          # the last step's label is not cut off
    assert any(len(d) > 20 for d in seen["fills"]) and seen["title"] == "loss over 8 ranks"
