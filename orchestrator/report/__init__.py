"""Reports of a run: ``report.md`` and a self-contained ``report.html``, from the registry alone.

``write_reports(run_dir)`` opens the registry read-only, so it also works on a
run that another process is still writing, and redraws the figures it needs.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.registry import Registry, atomic_write
from orchestrator.report.content import ReportData, gather
from orchestrator.report.figures import with_figures
from orchestrator.report.html import render_html
from orchestrator.report.markdown import render_markdown


def write_reports(run_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into ``run_dir``; return their paths."""
    with Registry.open(run_dir, readonly=True) as registry:
        data = with_figures(gather(registry))
    md = atomic_write(data.paths.report_md, render_markdown(data))
    page = atomic_write(data.paths.report_html, render_html(data))
    return md, page


__all__ = ["ReportData", "gather", "render_html", "render_markdown", "write_reports"]
