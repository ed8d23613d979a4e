"""A study's report: three files written atomically, a self-contained HTML page with its plots
embedded, a Markdown summary, and the page rendering with its images in headless Chromium."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from pathlib import Path

import pytest

from align_proxy.studies.analysis import analyse
from align_proxy.studies.report import report_json, write_report
from support import MODELS, PRIMARY, TARGET, diverging, everywhere, planted_cells

TITLE = "Transfer study: planted effects"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
# Chromium run as a test needs: no sandbox (root in containers), no GPU, nothing fetched in the background.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")
IMG_DATA = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="([^"]+)"')


def study_cells(drop_largest_seed: bool = False):
    cells = (planted_cells("sft", {"lr=high": everywhere(0.2), "lr=low": everywhere(0.1)}) +
             planted_cells("dpo", {"beta=0.1": everywhere(0.0), "beta=0.3": everywhere(0.05)}) +
             planted_cells("reward", {"lr=1": everywhere(0.1)}, metric="preference_accuracy"))
    return [c for c in cells if not (drop_largest_seed and c.model == "ladder-l" and c.seed == 2)]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A full study's report, written once for the module: (files, analysis)."""
    cells = study_cells()
    analysis = analyse(cells, MODELS, PRIMARY, target=TARGET)
    return write_report(tmp_path_factory.mktemp("study"), analysis, cells, TITLE), analysis


def test_report_writes_html_markdown_json_and_plots_with_no_temporary_files_left(report):
    files, analysis = report
    study_dir = files["html"].parent
    assert {files["html"].name, files["markdown"].name, files["json"].name} == {"report.html", "report.md",
                                                                                "report.json"}
    plots = sorted(p.name for key, p in files.items() if key.startswith("plot_"))
    assert plots == ["gain_vs_scale.png", "loss_curves.png", "metric_trust.png", "rank_agreement.png",
                     "transfer_curves.png"]
    assert sorted(p.name for p in (study_dir / "plots").iterdir()) == plots
    assert sorted(p.name for p in study_dir.iterdir()) == ["plots", "report.html", "report.json", "report.md"]
    assert json.loads(files["json"].read_text()) == report_json(analysis)


def test_rewriting_a_report_replaces_it_in_place(tmp_path):
    cells = study_cells()
    partial = analyse(cells[:10], MODELS, PRIMARY)
    write_report(tmp_path, partial, cells[:10], TITLE)
    files = write_report(tmp_path, analyse(cells, MODELS, PRIMARY), cells, TITLE)
    assert "Partial study" not in files["html"].read_text()
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_html_embeds_every_plot_as_a_png_with_alt_text_and_fetches_nothing(report):
    files, _ = report
    page = files["html"].read_text()
    images = IMG_DATA.findall(page)
    assert len(images) == page.count("<img") == sum(key.startswith("plot_") for key in files)
    for data, alt in images:
        assert base64.b64decode(data).startswith(b"\x89PNG\r\n\x1a\n")
        assert alt.strip()
    assert not re.search(r"https?://", page)
    assert "<script" not in page and "<link" not in page


def test_html_has_the_headline_table_with_a_coloured_verdict_per_scale(report):
    files, analysis = report
    page = files["html"].read_text()
    headline = page[page.index('<table id="headline">'):]
    headline = headline[:headline.index("</table>")]
    assert headline.count("<tr>") == 1 + len(analysis.headline)
    assert headline.count('class="helps"') >= 3  # sft at every scale
    conclusions = page[page.index("</table>", page.index('<table id="headline">')):].split("</ul>")[0]
    assert "worth a large run" in conclusions  # each recipe's conclusion, in a list under the table
    assert "How to read this" in page and "seeds - 1 degrees of freedom" in page


def test_markdown_has_each_recipe_and_links_the_plots_it_wrote(report):
    files, _ = report
    text = files["markdown"].read_text()
    for recipe in ("sft", "dpo", "reward"):
        assert f"**{recipe}**" in text
    for key, path in files.items():
        if key.startswith("plot_"):
            assert f"](plots/{path.name})" in text


def test_each_section_has_one_title_and_one_place_in_the_html_and_the_markdown(report):
    import html

    from align_proxy.studies.report.sections import sections

    files, analysis = report
    page, text = files["html"].read_text(), files["markdown"].read_text()
    shown = sections(analysis)
    html_at = [page.index(f"<h2>{html.escape(s.title)}</h2>") for s in shown]
    assert html_at == sorted(html_at)  # the declared order
    in_markdown = [s for s in shown if s.summary]
    markdown_at = [text.index(f"{'###' if s.detail else '##'} {s.title}\n") for s in in_markdown]
    assert markdown_at == sorted(markdown_at)
    assert not [s for s in shown if not s.summary and f"# {s.title}" in text]  # the full tables stay in the HTML


def test_report_json_words_each_headline_in_its_last_two_keys(report):
    from align_proxy.studies.report.prose import conclusion, confidence

    files, analysis = report
    written = json.loads(files["json"].read_text())["headline"]
    assert "conclusion" not in analysis.headline[0].to_json()  # the analysis holds no prose
    for entry, h in zip(written, analysis.headline):
        assert list(entry)[-2:] == ["confidence", "conclusion"]
        assert (entry["confidence"], entry["conclusion"]) == (confidence(h), conclusion(h, analysis))


def test_a_conclusion_says_whether_decoding_time_transfer_works_to_the_largest_model(report):
    from align_proxy.studies.analysis import GapClosed
    from align_proxy.studies.report.prose import conclusion
    from align_proxy.studies.stats import Interval

    _, analysis = report
    sft = next(h for h in analysis.headline if h.recipe == "sft")
    gap = GapClosed("sft", sft.recommended_variant, sft.metric, "ladder-s", "ladder-l", 1, 4, 1.0, 3, 0.3, 0.4, 0.5,
                    0.2, Interval(0.5, 0.2, 0.8))
    with_gap = dataclasses.replace(analysis, gap_closed=[gap])
    assert conclusion(sft, with_gap) == (f"{conclusion(sft, analysis)}; decoding-time transfer (ladder-l proxy-tuned "
                                         "by the smaller model, alpha 1): works from ladder-s, closing 50% [20%, 80%] "
                                         "of the gap to ladder-l tuned directly; training transfer: yes")
    to_a_smaller_model = dataclasses.replace(analysis, gap_closed=[dataclasses.replace(gap, large="ladder-m")])
    assert conclusion(sft, to_a_smaller_model) == conclusion(sft, analysis)


def test_a_gap_closed_with_no_estimate_still_draws_its_panel(report, tmp_path):
    """A large model whose direct tuning gains exactly nothing leaves the share undefined (nan): the panel
    says so instead of failing the whole report on an empty log axis (a tiny study did, on one processor)."""
    import math

    from align_proxy.studies.analysis import GapClosed
    from align_proxy.studies.report.plots import draw_plots
    from align_proxy.studies.stats import Interval

    _, analysis = report
    sft = next(h for h in analysis.headline if h.recipe == "sft")
    gap = GapClosed("sft", sft.recommended_variant, sft.metric, "ladder-s", "ladder-l", 1, 4, 1.0, 3, 0.3, 0.3, 0.3,
                    0.2, Interval(math.nan, math.nan, math.nan))
    plots = draw_plots(dataclasses.replace(analysis, gap_closed=[gap]), study_cells())
    assert "gap_closed" in plots


@pytest.mark.parametrize("module", ["align_proxy.studies.report.prose", "align_proxy.studies.report.formatting",
                                    "align_proxy.studies.verdicts"])
def test_the_report_modules_doctests_hold(module):
    import doctest
    import importlib

    failed, attempted = doctest.testmod(importlib.import_module(module))
    assert attempted > 0 and failed == 0


def test_a_partial_study_report_says_what_is_missing(tmp_path):
    cells = study_cells(drop_largest_seed=True)
    files = write_report(tmp_path, analyse(cells, MODELS, PRIMARY, target=TARGET), cells, TITLE)
    for path in (files["html"], files["markdown"]):
        assert "Partial study: 5 of 45 cells are not finished" in path.read_text()
    assert "sft lr=high on ladder-l seed 2 (not run)" in files["markdown"].read_text()


def test_text_in_the_page_is_escaped(tmp_path):
    cells = study_cells()
    files = write_report(tmp_path, analyse(cells, MODELS, PRIMARY), cells, "<script>alert(1)</script> & co")
    page = files["html"].read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in page


def test_a_study_without_loss_logs_leaves_out_the_loss_plot(tmp_path):
    cells = [dataclasses.replace(c, log_history=[]) for c in study_cells()]
    files = write_report(tmp_path, analyse(cells, MODELS, PRIMARY), cells, TITLE)
    assert "plot_loss_curves" not in files
    assert files["html"].read_text().count("<img") == 4


# --- in a real browser --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.skip(f"headless browser check needs {', '.join(missing)} "
                    "(Debian: apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="headless browser check needs selenium")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS + (f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
                                  "--window-size=1280,1024"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_html_report_renders_in_headless_chromium_with_every_image(report, browser):
    from selenium.webdriver.common.by import By

    files, analysis = report
    browser.get(files["html"].resolve().as_uri())  # returns once the page and its images have loaded
    assert browser.title == TITLE
    headline = browser.find_element(By.ID, "headline")
    assert headline.is_displayed()
    assert len(headline.find_elements(By.CSS_SELECTOR, "tbody tr")) == len(analysis.headline)
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.alt])")
    assert len(images) == sum(key.startswith("plot_") for key in files)
    for complete, width, height, alt in images:
        assert complete and width > 0 and height > 0, f"image did not render: {alt}"


def test_a_diverged_variant_is_reported_as_such_and_every_plot_still_draws(tmp_path):
    cells = diverging(study_cells(), "lr=high", "ladder-l")
    cells = [dataclasses.replace(c, log_history=[{"step": 1, "loss": 2.0}, {"step": 7, "loss": 1.5e5}])
             if c.diverged else c for c in cells]
    files = write_report(tmp_path, analyse(cells, MODELS, PRIMARY, target=TARGET), cells, TITLE)
    page = files["html"].read_text()
    assert "lr=high diverges at ladder-l (3/3 seeds" in page
    assert 'class="diverges"' in page
    assert {"plot_rank_agreement", "plot_loss_curves", "plot_gain_vs_scale"} <= set(files)


def test_the_cli_prints_the_headline_from_the_analysis_it_was_given_not_from_report_json(tmp_path):
    from align_proxy import cli
    from align_proxy.studies.report.console import print_report
    from align_proxy.studies.report.prose import recipe_verdicts
    from align_proxy.studies.runner import WrittenReport

    cells = study_cells()
    analysis = analyse(cells, MODELS, PRIMARY, target=TARGET)
    files = write_report(tmp_path, analysis, cells, TITLE)
    files["json"].unlink()  # nothing on disk to re-read
    with cli.console.capture() as captured:
        print_report(cli.console, WrittenReport(analysis, files))
    printed = captured.get()
    for words in recipe_verdicts(analysis):  # a heading per recipe, then its claims one to a line
        heading = f"{words.label}: {words.action} ({words.confidence} confidence)"
        assert f"{heading}\n  - {words.claims[0].console}" in printed
    assert "ladder-l (1.79M)" in printed and f"report: {files['html']}" in printed


def test_analysis_records_are_frozen_so_a_misspelt_field_fails_where_it_is_written():
    import dataclasses

    analysis = analyse(study_cells(), MODELS, PRIMARY)
    with pytest.raises(dataclasses.FrozenInstanceError):
        analysis.headline[0].verdict = "helps"  # not a field of a headline, and records are read-only
    with pytest.raises(AttributeError):
        analysis.gains[0].gain_interval  # noqa: B018 - a renamed field fails on read, not while rendering
