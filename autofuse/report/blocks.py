"""The report's layout blocks and the number formatting both printers share.

A report is a list of :class:`Section` s made of a few block types (paragraph, key / value list,
table, figure, heading, preformatted text); :mod:`autofuse.report.printers` prints the same
blocks as HTML and as Markdown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

#: what each fusion point feeds the fusion module (the diagram and the "Best architecture" list)
POINT_FEEDS = {
    "early": "stem features",
    "mid": "mid-stage features",
    "late": "pooled features",
    "hybrid": "features of every stage",
}


# ---- formatting ------------------------------------------------------------------------------


def fmt(x: Any, nd: int = 4) -> str:
    """A metric with ``nd`` decimals; ``-`` for missing or non-finite values."""
    if isinstance(x, bool) or x is None:
        return "-" if x is None else str(x)
    if isinstance(x, (int, float)):
        return f"{x:.{nd}f}" if math.isfinite(x) else "-"
    return str(x)


def fmt_signed(x: float | None, nd: int = 4) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:+.{nd}f}"


def fmt_int(x: Any) -> str:
    return f"{int(x):,}" if isinstance(x, (int, float)) and math.isfinite(x) else "-"


def fmt_s(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    if x >= 120:
        return f"{x / 60:.1f} min"
    return f"{x:.1f} s"


def fmt_pct(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:.0f}%"


def enc_str(encoders: dict[str, str]) -> str:
    return ", ".join(f"{m}={e}" for m, e in encoders.items())


# ---- layout blocks ---------------------------------------------------------------------------


@dataclass
class P:
    text: str
    muted: bool = False


@dataclass
class KV:
    items: list[tuple[str, str]]


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    name: str = ""
    numeric: set[int] = field(default_factory=set)  # right-aligned columns
    highlight: set[int] = field(default_factory=set)  # row indices to emphasise


@dataclass
class Fig:
    name: str
    png: bytes
    caption: str


@dataclass
class Pre:
    text: str


@dataclass
class H3:
    text: str


Block = P | KV | Table | Fig | Pre | H3


@dataclass
class Section:
    id: str
    title: str
    blocks: list[Block] = field(default_factory=list)

    def add(self, *blocks: Block) -> Section:
        self.blocks.extend(blocks)
        return self

    def note(self, text: str) -> Section:
        """A muted paragraph (something missing, skipped or not applicable)."""
        return self.add(P(text, muted=True))

    def figure(self, name: str, png: bytes | None, caption: str, missing: str) -> Section:
        """The figure, or the muted ``missing`` text when there is nothing to draw."""
        return self.note(missing) if png is None else self.add(Fig(name, png, caption))


__all__ = [
    "KV",
    "POINT_FEEDS",
    "Block",
    "Fig",
    "H3",
    "P",
    "Pre",
    "Section",
    "Table",
    "enc_str",
    "fmt",
    "fmt_int",
    "fmt_pct",
    "fmt_s",
    "fmt_signed",
]
