"""``mritumor report``: one self-contained HTML page and ``MODEL_CARD.md`` from a run folder.

:mod:`.collect` reads whatever the run holds (never failing on a missing part: it records
which command produces it), and :mod:`.render` fills the Jinja2 templates shipped in
``templates/`` and writes the files atomically.
"""

from __future__ import annotations

from mritumor.report.render import write_model_card, write_report

__all__ = ["write_model_card", "write_report"]
