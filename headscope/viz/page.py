"""Self-contained pages of several figures: plotly.js is inlined once in the page's head, not once per
figure, so a page of ten figures weighs little more than plotly.js itself (about 4.8 MB) and opens with no
network. A page is also printed to PDF by headless Chromium, the browser kaleido already needs.
"""

from __future__ import annotations

import html
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from headscope.errors import InputError
from headscope.io import atomic_path
from headscope.notebook import html_table

_CSS = """
body { font-family: Arial, "Liberation Sans", Helvetica, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #111; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ccc; }
.hs-table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
.hs-table th, .hs-table td { border: 1px solid #ddd; padding: 2px 8px; text-align: left; }
.hs-table caption { text-align: left; font-weight: bold; padding: 4px 0; }
.hs-caption { font-size: 0.85em; color: #444; margin: 0.3em 0 1em; }
.hs-figure { break-inside: avoid; margin: 1em 0; }
.hs-token { padding: 1px 2px; border-radius: 2px; }
@media print { body { max-width: none; } h2 { break-after: avoid; } }
"""


@dataclass
class Page:
    """An HTML page built in order: headings, paragraphs, tables, figures, raw snippets."""

    title: str
    parts: list[str] = field(default_factory=list)

    def heading(self, text: str, level: int = 2, anchor: str | None = None) -> None:
        ident = f' id="{html.escape(anchor)}"' if anchor else ""
        self.parts.append(f"<h{level}{ident}>{html.escape(text)}</h{level}>")

    def paragraph(self, text: str) -> None:
        self.parts.append(f"<p>{html.escape(text)}</p>")

    def raw(self, snippet: str) -> None:
        """Trusted HTML made by headscope (a token view, a table)."""
        self.parts.append(snippet)

    def table(self, rows: list[dict], columns: list[str] | None = None, caption: str | None = None,
              max_rows: int = 40) -> None:
        self.parts.append(html_table(rows, columns, caption, max_rows))

    def figure(self, fig: go.Figure, caption: str | None = None) -> None:
        """A figure as a div that draws itself with the page's one copy of plotly.js."""
        div = fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})
        note = f'<div class="hs-caption">{html.escape(caption)}</div>' if caption else ""
        self.parts.append(f'<div class="hs-figure">{div}{note}</div>')

    def to_html(self) -> str:
        """The whole page: plotly.js once, in the head."""
        return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
                f"<title>{html.escape(self.title)}</title><style>{_CSS}</style>"
                f"<script type=\"text/javascript\">{get_plotlyjs()}</script></head>\n<body>"
                f"<h1>{html.escape(self.title)}</h1>\n" + "\n".join(self.parts) + "\n</body></html>\n")


def write_page(page: Page, path: str | Path) -> None:
    """`page` as .html, or printed to .pdf by headless Chromium (every figure drawn first)."""
    suffix = Path(path).suffix.lower()
    if suffix in (".html", ".htm"):
        with atomic_path(path) as tmp:
            Path(tmp).write_text(page.to_html(), encoding="utf-8")
    elif suffix == ".pdf":
        with atomic_path(path) as tmp:
            _print_pdf(page.to_html(), Path(tmp))
    else:
        raise InputError(f"{path}: a page is written as .html or .pdf")


def chromium() -> str:
    """The path of the system's Chromium."""
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not found:
        raise InputError("printing a page to PDF needs Chromium (scripts/install_chromium.sh)")
    return found


def _print_pdf(text: str, out: Path) -> None:
    with tempfile.TemporaryDirectory() as folder:
        page = Path(folder) / "page.html"
        page.write_text(text, encoding="utf-8")
        command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   f"--user-data-dir={folder}/profile", "--virtual-time-budget=10000", "--no-pdf-header-footer",
                   f"--print-to-pdf={out}", page.as_uri()]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired as err:
            raise InputError(f"Chromium did not print {out.name} within 300 s") from err
        if done.returncode != 0 or not out.is_file() or out.stat().st_size == 0:
            raise InputError(f"Chromium could not print the page to PDF: {(done.stderr or '').strip()[-300:]}")
