"""``mritumor report``: the self-contained HTML page and MODEL_CARD.md of a run.

The run is built, not trained (``helpers.build_run``); ``eval``, ``calibrate`` and
``threshold`` run on it through the CLI, and every headline number on the page and in
the card is compared with the JSON file it comes from.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from helpers import BuiltRuns, SyntheticData
from mritumor.cli.main import app
from mritumor.report.render import interval, number
from mritumor.run.layout import RunLayout

WIDE = {"COLUMNS": "200"}
MITCHELL_SECTIONS = (
    "Model details",
    "Intended use",
    "Factors",
    "Metrics",
    "Evaluation data",
    "Training data",
    "Quantitative analyses",
    "Ethical considerations",
    "Caveats and recommendations",
)


@pytest.fixture(scope="module")
def data_root(synthetic_data: SyntheticData) -> Path:
    return synthetic_data(train=6, val=5, test=6, image_size=40, seed=3)


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), env=WIDE)


@pytest.fixture(scope="module")
def scored_run(
    data_root: Path, built_run: BuiltRuns, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A run with eval, calibrate, threshold and one Grad-CAM panel, in a folder with spaces."""
    run_dir = Path(
        shutil.copytree(built_run(data_root), tmp_path_factory.mktemp("report") / "my runs/train-1")
    )
    data = f"paths.data_dir={data_root}"
    image = sorted((data_root / "test" / "glioma").iterdir())[0]
    for args in (
        ("eval", "--set", data),
        ("calibrate", "--set", data),
        ("threshold", "--strategy", "youden", "--set", data),
        ("gradcam", str(image)),
    ):
        result = invoke(*args, "--run", str(run_dir), "-q")
        assert result.exit_code == 0, result.output
    result = invoke("report", "--run", str(run_dir))
    assert result.exit_code == 0, result.output
    assert str(RunLayout(run_dir).report) in result.output
    assert str(RunLayout(run_dir).model_card) in result.output
    return run_dir


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


class Page(HTMLParser):
    """The references, images and ``data-source`` cells of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.references: list[str] = []
        self.ids: set[str] = set()
        self.tags: set[str] = set()
        self.sources: dict[str, str] = {}
        self._source: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        values = dict(attrs)
        self.references += [value or "" for key, value in attrs if key in ("src", "href")]
        if values.get("id"):
            self.ids.add(values["id"] or "")
        self._source = values.get("data-source")

    def handle_data(self, data: str) -> None:
        if self._source is not None:
            self.sources[self._source] = data
            self._source = None


def parse(html: str) -> Page:
    page = Page()
    page.feed(html)
    return page


def lookup(run_dir: Path, source: str) -> Any:
    """The JSON value a ``data-source`` names: ``file.json#key.key``."""
    file, _, keys = source.partition("#")
    reports = RunLayout(run_dir).reports
    value: Any = read_json(run_dir / file if file == "bundle.json" else reports / file)
    for key in keys.split("."):
        value = value[key]
    return value


def test_every_png_of_the_run_is_inlined(scored_run: Path) -> None:
    html = RunLayout(scored_run).report.read_text(encoding="utf-8")
    pngs = sorted(RunLayout(scored_run).reports.rglob("*.png"))
    assert any(path.parent.name == "gradcam" for path in pngs)
    assert html.count("data:image/png;base64,") == len(pngs) >= 10


def test_the_page_references_nothing_outside_itself(scored_run: Path) -> None:
    page = parse(RunLayout(scored_run).report.read_text(encoding="utf-8"))
    assert page.references
    for reference in page.references:
        if reference.startswith("#"):
            assert reference[1:] in page.ids, reference
        else:
            assert reference.startswith("data:image/png;base64,"), reference[:60]
    assert "script" not in page.tags
    assert not {"link", "iframe", "object", "embed"} & page.tags


def test_headline_numbers_equal_their_json(scored_run: Path) -> None:
    html = RunLayout(scored_run).report.read_text(encoding="utf-8")
    sources = parse(html).sources
    expected = {
        "eval-test/summary.json#metrics.accuracy",
        "eval-test/summary.json#metrics.accuracy_ci95",
        "eval-test/summary.json#metrics.macro_f1",
        "eval-test/summary.json#metrics.macro_f1_ci95",
        "calibration/calibration_metrics.json#before.ECE",
        "calibration/calibration_metrics.json#after.ECE",
        "calibration/calibration_metrics.json#T",
        "threshold/threshold_optimization.json#threshold",
        "threshold/threshold_optimization.json#ci95.sensitivity",
        "threshold/threshold_optimization.json#ci95.specificity",
        "bundle.json#temperature",
    }
    assert expected <= set(sources)
    for source, text in sources.items():
        value = lookup(scored_run, source)
        assert text == (interval(value) if isinstance(value, list) else number(value)), source
    # And the formatting itself: four decimals, the interval as [low, high].
    summary = read_json(RunLayout(scored_run).reports / "eval-test" / "summary.json")
    low, high = summary["metrics"]["accuracy_ci95"]
    assert f"[{low:.4f}, {high:.4f}]" in html
    assert f"{summary['metrics']['accuracy']:.4f}" in html


def test_model_card_has_the_mitchell_sections_and_the_json_numbers(scored_run: Path) -> None:
    card = RunLayout(scored_run).model_card.read_text(encoding="utf-8")
    headings = re.findall(r"^## (.+)$", card, flags=re.MULTILINE)
    assert headings == list(MITCHELL_SECTIONS)
    assert "### Out-of-scope uses" in card
    reports = RunLayout(scored_run).reports
    metrics = read_json(reports / "eval-test" / "summary.json")["metrics"]
    calibration = read_json(reports / "calibration" / "calibration_metrics.json")
    point = read_json(reports / "threshold" / "threshold_optimization.json")
    for value in (
        f"accuracy {number(metrics['accuracy'])} {interval(metrics['accuracy_ci95'])}",
        f"macro-F1 {number(metrics['macro_f1'])} {interval(metrics['macro_f1_ci95'])}",
        f"T = {number(calibration['T'])}, ECE {number(calibration['before']['ECE'])} before "
        f"and {number(calibration['after']['ECE'])} after",
        f"threshold {number(point['threshold'])}, sensitivity {number(point['sensitivity'])} "
        f"{interval(point['ci95']['sensitivity'])}",
    ):
        assert value in card


def test_a_bare_run_says_which_command_makes_each_missing_section(
    data_root: Path, built_run: BuiltRuns, run_copy: Callable[..., Path], tmp_path: Path
) -> None:
    run_dir = run_copy(built_run(data_root), "bare run/train-1")
    output = tmp_path / "out dir" / "page.html"
    output.parent.mkdir()
    output.write_text("old", encoding="utf-8")  # a derived file: replaced
    result = invoke("report", "--run", str(run_dir), "--output", str(output))
    assert result.exit_code == 0, result.output
    html = output.read_text(encoding="utf-8")
    for command in (
        "mritumor eval",
        "mritumor calibrate",
        "mritumor threshold",
        "mritumor gradcam",
    ):
        assert f"run <code>{command}" in html, command
    assert "data:image/png" not in html
    assert all(reference.startswith("#") for reference in parse(html).references)
    card = RunLayout(run_dir).model_card.read_text(encoding="utf-8")
    assert re.findall(r"^## (.+)$", card, flags=re.MULTILINE) == list(MITCHELL_SECTIONS)
    assert "No evaluation yet: run `mritumor eval`" in card


def test_unreadable_parts_are_reported_not_raised(
    data_root: Path, built_run: BuiltRuns, run_copy: Callable[..., Path]
) -> None:
    run_dir = run_copy(built_run(data_root))
    broken = RunLayout(run_dir).reports / "eval-test"
    broken.mkdir(parents=True)
    (broken / "summary.json").write_text("{not json", encoding="utf-8")
    result = invoke("report", "--run", str(run_dir))
    assert result.exit_code == 0, result.output
    html = RunLayout(run_dir).report.read_text(encoding="utf-8")
    assert "cannot read reports/eval-test/summary.json" in html


def test_text_from_the_run_is_escaped(
    data_root: Path, built_run: BuiltRuns, run_copy: Callable[..., Path]
) -> None:
    run_dir = run_copy(built_run(data_root))
    bundle_file = RunLayout(run_dir).bundle
    bundle = read_json(bundle_file)
    bundle["backbone"] = "<script>alert(1)</script>"
    bundle_file.write_text(json.dumps(bundle), encoding="utf-8")
    assert invoke("report", "--run", str(run_dir)).exit_code == 0
    html = RunLayout(run_dir).report.read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "script" not in parse(html).tags


def test_the_templates_are_package_data() -> None:
    from importlib.resources import files

    names = {path.name for path in files("mritumor.report").joinpath("templates").iterdir()}
    assert {"report.html.j2", "model_card.md.j2"} <= names


def test_refusals(tmp_path: Path, data_root: Path, built_run: BuiltRuns) -> None:
    result = invoke("report", "--run", str(tmp_path))
    assert result.exit_code == 2
    assert "not a run" in result.output
    missing = tmp_path / "nowhere" / "report.html"
    result = invoke("report", "--run", str(built_run(data_root)), "--output", str(missing))
    assert result.exit_code == 2
    assert "does not exist" in result.output


def chromium_page_requests(page: Path, workdir: Path) -> tuple[np.ndarray, list[str]]:
    """Render ``page`` in headless Chromium: the screenshot's grey pixels, and the URLs that
    the page itself asked for beyond local files.

    Chromium's own background traffic (time sync, accounts) also appears in its net log, so a
    request counts as the page's when its network isolation key is the page's ``file://`` site.
    """
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    workdir.mkdir(parents=True, exist_ok=True)
    shot, log = workdir / "page.png", workdir / "net.json"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            f"--user-data-dir={workdir / 'profile'}",
            f"--log-net-log={log}",
            f"--screenshot={shot}",
            "--window-size=1200,2000",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    events = json.loads(log.read_text(encoding="utf-8"))["events"]
    requested = {
        event["params"]["url"]
        for event in events
        if str(event.get("params", {}).get("network_isolation_key", "")).startswith("file://")
        and not event["params"].get("url", "file:").startswith(("file:", "data:"))
    }
    return np.asarray(Image.open(shot).convert("L")), sorted(requested)


@pytest.mark.slow
def test_chromium_renders_the_page_offline(scored_run: Path, tmp_path: Path) -> None:
    """The page renders in headless Chromium to a screenshot that is not blank, and asks for
    nothing beyond itself; the same check catches a page that does load a remote image."""
    pixels, requested = chromium_page_requests(RunLayout(scored_run).report, tmp_path)
    assert pixels.std() > 5, "the screenshot is blank"
    assert requested == []
    leaky = tmp_path / "leaky.html"
    leaky.write_text('<p>x</p><img src="http://example.invalid/x.png">', encoding="utf-8")
    assert chromium_page_requests(leaky, tmp_path / "control")[1] == [
        "http://example.invalid/x.png"
    ]
