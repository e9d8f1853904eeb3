"""The one page format of Esper's HTML reports: a run's (``esper.karn.report``) and a study's
(``esper.study.report``), which may not import each other.

A page is self-contained: its style is inline, its images are PNGs embedded as base64 data URIs,
and it has no scripts, so it opens from a file, a mail attachment or an artifact store alike.
Callers pass finished HTML fragments (``page``'s ``body``, ``table``'s cells) and plain text
(titles, captions, warnings, which are escaped here). A ``TextTable`` is a table written once as
text and shown alike as markdown (a study's ``results.md``), HTML (its report) and JSON (the
dashboard's study page).
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REPORT_FILE = "report.html"
"""A report's page: a run's in its ``report/`` directory, a study's in the study directory."""

DPI = 100
WIDTH_IN, HEIGHT_IN = 9.6, 3.84
"""Figure size: 9.6 x 3.84 inch at ``DPI`` -> 960 x 384 px, wide enough for the legend beside
the axes and readable in a browser without zooming (callers give taller ones for more rows)."""

FEW_POINTS = 2
"""A line with fewer finite points than this is drawn with markers (one point draws no line)."""


def new_figure(width: float = WIDTH_IN, height: float = HEIGHT_IN) -> Figure:
    """A figure of the pages' resolution drawn by Agg for itself alone: pyplot's global state
    is untouched (matplotlib is imported here, when the first plot is made)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def png(figure: Figure) -> bytes:
    """``figure`` as PNG bytes without matplotlib's version stamp (the same plot, the same
    bytes)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def marker(values: Iterable[float]) -> str | None:
    """A dot marker for a line with fewer than ``FEW_POINTS`` finite values, else none."""
    return "o" if sum(math.isfinite(v) for v in values) < FEW_POINTS else None


def plot_label(name: str) -> str:
    """``name`` (a run's or an arm's) as a plot label that matplotlib shows as written: ``$``
    escaped (a run named ``run_$1_$2`` was read as mathematics, and its report failed with a
    traceback) and a leading ``_`` behind a zero-width space (matplotlib leaves such labels out
    of the legend)."""
    text = name.replace("$", r"\$")
    return "\u200b" + text if text.startswith("_") else text


CSS = """
body { font-family: sans-serif; margin: 2em auto; max-width: 66em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.75em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.warning { background: #fff3cd; border: 1px solid #e0b040; padding: 0.5em 1em; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; }
figcaption { color: #555; font-size: 0.9em; }
"""


def page(title: str, body: Iterable[str], warnings: Sequence[str] = ()) -> str:
    """A whole page: ``title`` as its title and heading, then one warning paragraph per entry
    of ``warnings``, then the ``body`` fragments, one per line."""
    name = html.escape(title)
    head = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>{name}</title><style>{CSS}</style></head><body>",
        f"<h1>{name}</h1>",
    ]
    notes = [f"<p class='warning'>Warning: {html.escape(w)}</p>" for w in warnings]
    return "\n".join([*head, *notes, *body, "</body></html>\n"])


def figure(anchor: str, png: bytes, caption: str, note: str = "") -> str:
    """A PNG embedded with its caption (the image's alt text too); ``note`` is HTML appended
    to the caption."""
    data = base64.b64encode(png).decode("ascii")
    text = html.escape(caption)
    return (
        f"<figure id='{html.escape(anchor)}'><img alt='{text}' "
        f"src='data:image/png;base64,{data}'><figcaption>{text}{note}</figcaption></figure>"
    )


def table(
    kind: str, head: Sequence[str], rows: Iterable[Sequence[str]], numbers_from: int | None = None
) -> str:
    """A table of class ``kind``: plain-text ``head`` cells, then ``rows`` of HTML cells, each
    row's first cell a header and its cells from index ``numbers_from`` on (none: no cell)
    right-aligned numbers."""
    heads = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    lines = [f"<table class='{kind}'><tr>{heads}</tr>"]
    first_number = len(head) if numbers_from is None else numbers_from
    for first, *rest in rows:
        cells = "".join(
            f"<td class='num'>{c}</td>" if i >= first_number else f"<td>{c}</td>"
            for i, c in enumerate(rest, start=1)
        )
        lines.append(f"<tr><th>{first}</th>{cells}</tr>")
    return "\n".join([*lines, "</table>"])


@dataclass(frozen=True)
class TextTable:
    """A table whose cells are already text, with its section's title and sentence.

    Attributes:
        kind: what it is, one word: the HTML table's class (``improvements``).
        title: the section's title (``Probability of improvement``).
        sentence: what the table shows, in one sentence ("": none).
        columns: the column headings.
        rows: each row's cells, one per column.
        numbers_from: the first column of numbers (aligned right); ``len(columns)``: none.
        empty: what the section says when there is no row ("": the section is left out).
    """

    kind: str
    title: str
    sentence: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    numbers_from: int
    empty: str

    @property
    def shown(self) -> bool:
        """Whether the section is shown: it has rows, or says why not."""
        return bool(self.rows or self.empty)

    def markdown(self) -> list[str]:
        """The section as markdown lines, ending in a blank line (none when not ``shown``)."""
        if not self.shown:
            return []
        lines = [f"## {self.title}", "", *([self.sentence, ""] if self.sentence else [])]
        if not self.rows:
            return [*lines, self.empty, ""]
        right = len(self.columns) - self.numbers_from
        lines += [
            "| " + " | ".join(_markdown_cell(c) for c in self.columns) + " |",
            "|" + "---|" * self.numbers_from + "--:|" * right,
        ]
        lines += ["| " + " | ".join(_markdown_cell(c) for c in row) + " |" for row in self.rows]
        return [*lines, ""]

    def html(self) -> list[str]:
        """The section as HTML fragments (none when not ``shown``)."""
        if not self.shown:
            return []
        sentence = [f"<p>{html.escape(self.sentence)}</p>"] if self.sentence else []
        rows = [[html.escape(c) for c in row] for row in self.rows]
        return [
            f"<h2>{html.escape(self.title)}</h2>",
            *sentence,
            table(self.kind, self.columns, rows, self.numbers_from)
            if rows
            else f"<p>{html.escape(self.empty)}</p>",
        ]


def _markdown_cell(text: str) -> str:
    """``text`` as one markdown table cell: one line, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")
