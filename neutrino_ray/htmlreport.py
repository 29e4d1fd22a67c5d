"""A self-contained HTML report: one file an analyst opens straight from object storage in a browser.

Figures are embedded as base64 PNG data URIs, the style sheet is inline, and nothing is fetched from
anywhere, so the page renders the same from a laptop, an S3 console link or a presigned URL. Published on
S3 with ``Content-Type: text/html`` (:data:`CONTENT_TYPE`), so a browser shows it instead of downloading it.
"""

from __future__ import annotations

import base64
import html
import time
from collections.abc import Sequence
from typing import Any

REPORT_HTML = "report.html"
CONTENT_TYPE = "text/html; charset=utf-8"

_STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:70em;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:1em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
figure{display:inline-block;margin:.5em;vertical-align:top}figure img{max-width:34em;border:1px solid #eee}
figcaption{font-size:.85em;color:#555;max-width:34em}dt{font-weight:600;margin-top:.6em}dd{margin-left:1.5em}
.meta{color:#666;font-size:.85em}
"""


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, int):
        return f"{v:,}"
    return html.escape(str(v))


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An HTML table (floats to 4 decimals, integers with thousands separators, text escaped)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render(title: str, intro: str, sections: Sequence[tuple[str, str]], figures: dict[str, bytes],
           captions: dict[str, str], definitions: dict[str, str], provenance: dict[str, Any]) -> bytes:
    """The page: title, intro, ``sections`` ((heading, HTML) pairs: the headline tables), the figures (PNG
    bytes by name, embedded), the definitions and where the numbers came from."""
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1><p>{html.escape(intro)}</p>"]
    for heading, body in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>{body}")
    if figures:
        parts.append("<h2>Figures</h2>")
        for name, blob in figures.items():
            data = base64.b64encode(blob).decode()
            cap = html.escape(captions.get(name, name))
            parts.append(f"<figure id='{html.escape(name)}'><img alt='{html.escape(name)}' "
                         f"src='data:image/png;base64,{data}'><figcaption>{cap}</figcaption></figure>")
    parts.append("<h2>Definitions</h2><dl>" + "".join(
        f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in definitions.items()) + "</dl>")
    prov = "; ".join(f"{html.escape(k)}: {html.escape(str(v))}" for k, v in provenance.items())
    parts.append(f"<p class='meta'>{prov}; written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}</p>"
                 "</body></html>")
    return "".join(parts).encode()


DEFINITIONS = {
    "angular error": "the angle between the true and the predicted direction, arccos of their unit vectors' dot "
                     "product (the Kaggle 'Neutrinos in Deep Ice' metric, per event), in radians",
    "mean angular error": "the competition score: the mean of the angular errors over every event of the split",
    "median, 68 % containment": "the 50th and 68th percentiles of the angular errors (exact)",
    "bootstrap interval": "68 % (95 %) of resampled means lie inside: the 16th-84th (2.5th-97.5th) percentiles of "
                          "the statistic over resamples of the events",
    "paired difference": "mean of err(A) − err(B) over the same events (negative: A better), with a Poisson "
                         "bootstrap (each event weighted Poisson(1) in each resample, seeded per batch)",
    "A better on": "the fraction of events whose angular error is strictly smaller with A than with B",
    "coverage 68 / 90": "the fraction of events whose true error lies inside the predicted 68 % / 90 % "
                        "von Mises-Fisher containment radius (calibrated: 0.68 / 0.90)",
    "s.e.m.": "standard error of a bin's mean, its standard deviation over √(events − 1)",
}
