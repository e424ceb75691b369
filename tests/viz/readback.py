"""Reading written figures back as a reader would: pages through headless Chromium (offline), SVG text
positions against the canvas, PDFs rendered to PNG by poppler's pdftoppm."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--virtual-time-budget=8000", "--dump-dom"]
SVG = "{http://www.w3.org/2000/svg}"


def rendered_dom(path: Path) -> str:
    """The page's DOM after Chromium ran its scripts, offline: plotly draws into `main-svg` elements."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "Chromium is needed to check pages as a person sees them: run scripts/install_chromium.sh"
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"file://{path.resolve()}"],
                              capture_output=True, text=True, timeout=180)
    return done.stdout


def external_references(page: str) -> list[str]:
    """Every src/href of a script, link, img or iframe that points at the network."""
    return re.findall(r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)\s*=\s*[\"']?(https?:[^\"' >]+)", page, re.I)


def _translate(transform: str | None) -> tuple[float, float]:
    found = re.search(r"translate\(\s*([-\d.e]+)[ ,]*([-\d.e]*)\s*\)", transform or "")
    return (float(found[1]), float(found[2] or 0)) if found else (0.0, 0.0)


def _font_px(style: str | None) -> float:
    found = re.search(r"font-size:\s*([\d.]+)px", style or "")
    return float(found[1]) if found else 12.0


def svg_text_boxes(path: Path) -> tuple[float, float, list[tuple[str, float, float, float, float]]]:
    """The canvas (width, height) and, for each non-empty text line, (text, left, top, right, bottom)
    estimated from its anchor, font size and text-anchor (glyphs taken as 0.55 em wide). Rotated text
    is checked by its anchor point only."""
    root = ElementTree.parse(path).getroot()
    width, height = float(root.get("width")), float(root.get("height"))
    boxes = []

    def walk(element, dx: float, dy: float) -> None:
        tx, ty = _translate(element.get("transform"))
        dx, dy = dx + tx, dy + ty
        if element.tag == f"{SVG}text":
            boxes.extend(_text_lines(element, dx, dy))
            return
        for child in element:
            walk(child, dx, dy)

    walk(root, 0.0, 0.0)
    return width, height, boxes


def _text_lines(element, dx: float, dy: float) -> list[tuple[str, float, float, float, float]]:
    size = _font_px(element.get("style"))
    anchor = re.search(r"text-anchor:\s*(\w+)", element.get("style") or "")
    anchor = element.get("text-anchor") or (anchor[1] if anchor else "start")
    rotated = "rotate" in (element.get("transform") or "")
    x, y = dx + float(element.get("x") or 0), dy + float(element.get("y") or 0) + _em(element.get("dy"), size)
    spans = element.findall(f"{SVG}tspan")
    lines = [(span.text or "".join(span.itertext()), span) for span in spans if span.get("class") == "line"] \
        or [("".join(element.itertext()), None)]
    boxes = []
    for text, span in lines:
        offset = _em(span.get("dy"), size) if span is not None else 0.0  # plotly's line spans: dy from the text's y
        text = text.strip()
        if not text:
            continue
        length = 0 if rotated else 0.55 * size * len(text)
        left = x - {"start": 0, "middle": length / 2, "end": length}.get(anchor, 0)
        boxes.append((text, left, y + offset - 0.8 * size, left + length, y + offset + 0.2 * size))
    return boxes


def _em(value: str | None, size: float) -> float:
    if not value:
        return 0.0
    return float(value[:-2]) * size if value.endswith("em") else float(value.replace("px", ""))


def texts_outside_canvas(path: Path, tolerance: float = 2.0) -> list[str]:
    """The text lines of an SVG that reach past its canvas (empty when everything fits)."""
    width, height, boxes = svg_text_boxes(path)
    return [f"{text!r} at ({left:.0f}, {top:.0f})-({right:.0f}, {bottom:.0f}) in {width:.0f} x {height:.0f}"
            for text, left, top, right, bottom in boxes
            if left < -tolerance or top < -tolerance or right > width + tolerance or bottom > height + tolerance]


def pdf_to_png(pdf: Path, dpi: int = 50) -> Path:
    """The PDF's first page as a PNG beside it, by pdftoppm (poppler-utils)."""
    tool = shutil.which("pdftoppm")
    assert tool, "pdftoppm renders PDFs in the tests: run scripts/install_chromium.sh (poppler-utils)"
    stem = pdf.with_suffix("")
    subprocess.run([tool, "-png", "-r", str(dpi), "-singlefile", "-f", "1", "-l", "1", str(pdf), str(stem)],
                   check=True, capture_output=True, timeout=120)
    return stem.with_suffix(".png")


def ink_fraction(png: Path) -> float:
    """The share of pixels that are not (near) white."""
    from PIL import Image

    counts = Image.open(png).convert("L").histogram()  # pixels per grey level 0..255
    return sum(counts[:240]) / sum(counts)
