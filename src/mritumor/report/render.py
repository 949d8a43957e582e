"""Filling the Jinja2 templates with a run's facts, and writing the report and the model card.

The HTML page is self-contained: figures are inlined as base64 PNG data URIs, the CSS is
inline, and there is no script, so it opens from a file, offline, in any browser. Every
number on the page and in the card is read from the run's JSON files and formatted by the
filters below, never typed into a template.
"""

from __future__ import annotations

import base64
import math
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mritumor import __version__
from mritumor.core.errors import UsageError
from mritumor.core.fsutil import atomic_write_text
from mritumor.report.collect import COMMANDS, Figure, RunFacts, collect
from mritumor.run.layout import RunLayout
from mritumor.run.provenance import utc_now

if TYPE_CHECKING:
    import jinja2

REPORT_TEMPLATE = "report.html.j2"
MODEL_CARD_TEMPLATE = "model_card.md.j2"
DIGITS = 4
"""Decimals of every number in the report and the card."""
DASH = "\u2013"
"""What a missing number reads as: an en dash."""


def number(value: Any, digits: int = DIGITS) -> str:
    """``value`` with ``digits`` decimals; an en dash for a missing or non-finite one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return DASH if value is None else str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return DASH
    return f"{value:.{digits}f}"


def interval(value: Any) -> str:
    """A 95% interval ``[low, high]``, or an en dash when there is none."""
    if not isinstance(value, list | tuple) or len(value) != 2 or value[0] is None:
        return DASH
    return f"[{number(value[0])}, {number(value[1])}]"


def data_uri(figure: Figure) -> str:
    """The PNG as a ``data:`` URI, so the page needs no other file."""
    encoded = base64.b64encode(figure.path.read_bytes()).decode("ascii")
    return f"data:image/png;base64,{encoded}"


@cache
def environment() -> jinja2.Environment:
    """Templates from the package data, HTML autoescaped, Markdown not."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("mritumor.report", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default=False),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(number=number, interval=interval, data_uri=data_uri)
    return env


def _context(facts: RunFacts) -> dict[str, Any]:
    return {
        "facts": facts,
        "bundle": facts.bundle,
        "commands": COMMANDS,
        "run_name": facts.name,
        "mritumor_version": __version__,
        "generated": utc_now(),
    }


def render_report(facts: RunFacts) -> str:
    return environment().get_template(REPORT_TEMPLATE).render(_context(facts))


def render_model_card(facts: RunFacts) -> str:
    return environment().get_template(MODEL_CARD_TEMPLATE).render(_context(facts))


def write_report(run_dir: Path, output: Path | None = None) -> Path:
    """Write the run's self-contained HTML report (default ``reports/report.html``).

    An existing file is replaced atomically: the report is derived from the run. Raises
    :class:`~mritumor.run.layout.BundleError` for a folder that is not a run and
    :class:`UsageError` when the folder of ``output`` does not exist.
    """
    facts = collect(run_dir)
    if output is None:
        output = RunLayout(run_dir).report
        output.parent.mkdir(parents=True, exist_ok=True)
    elif not output.parent.is_dir():
        raise UsageError(f"cannot write {output}: the folder {output.parent} does not exist")
    elif output.is_dir():
        raise UsageError(f"cannot write {output}: it is a folder; name a file")
    atomic_write_text(output, render_report(facts))
    return output


def write_model_card(run_dir: Path) -> Path:
    """Write ``MODEL_CARD.md`` into the run folder, from the same files as the report."""
    facts = collect(run_dir)
    path = RunLayout(run_dir).model_card
    atomic_write_text(path, render_model_card(facts))
    return path
