"""Print the report's sections as HTML and Markdown, and write the report's files.

``report.html`` is one self-contained file: the stylesheet (``static/report.css``), the small
script that sorts a table by the clicked column header (``static/report.js``) and every figure
(a PNG data URI) are inlined, so it opens offline. ``report.md`` links the same PNGs under
``figures/``; ``report.json`` holds the numbers behind both.
"""

from __future__ import annotations

import base64
import functools
import html
from importlib.resources import files
from pathlib import Path
from typing import Any

from autofuse._util import atomic_write, atomic_write_text, json_text
from autofuse.report.blocks import H3, KV, Block, Fig, P, Pre, Section, Table
from autofuse.report.collect import ReportData
from autofuse.report.sections import build_sections


@functools.cache
def _static(name: str) -> str:
    """A file of the package's ``static/`` folder (the report's CSS and JS)."""
    return (files("autofuse.report") / "static" / name).read_text(encoding="utf-8")


def _e(s: Any) -> str:
    return html.escape(str(s), quote=True)


def to_html(d: ReportData, sections: list[Section]) -> str:
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>autofuse report: {_e(d.study)}</title>",
        f"<style>\n{_static('report.css')}</style></head><body>",
        f"<header><h1>autofuse report: study {_e(d.study)}</h1>",
        f"<p>dataset {_e(d.dataset.get('name', '?'))} · objective {_e(d.metric)} ({_e(d.direction)}) · "
        f"generated {_e(d.generated_at)}</p></header>",
        "<nav>"
        + "".join(f'<a href="#{s.id}">{_e(s.title)}</a>' for s in sections)
        + "</nav><main>",
    ]
    for s in sections:
        out.append(f'<section id="{s.id}"><h2>{_e(s.title)}</h2>')
        for i, b in enumerate(s.blocks):
            out.append(_html_block(b, verdict=(s.id == "summary" and i == 0)))
        out.append("</section>")
    out.append(
        f"</main><footer>autofuse · history from the {_e(d.source)} tables · "
        f"figures and script inlined; this file needs no network</footer>"
    )
    out.append(f"<script>\n{_static('report.js')}</script></body></html>")
    return "\n".join(out)


def _html_block(b: Block, verdict: bool = False) -> str:
    if isinstance(b, P):
        cls = "verdict" if verdict else ("muted" if b.muted else "")
        return f'<p class="{cls}">{_e(b.text)}</p>' if cls else f"<p>{_e(b.text)}</p>"
    if isinstance(b, H3):
        return f"<h3>{_e(b.text)}</h3>"
    if isinstance(b, KV):
        return "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in b.items) + "</dl>"
    if isinstance(b, Pre):
        return f"<pre>{_e(b.text)}</pre>"
    if isinstance(b, Fig):
        data = base64.b64encode(b.png).decode("ascii")
        return (
            f'<figure id="fig-{b.name}"><img alt="{_e(b.caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_e(b.caption)}</figcaption></figure>"
        )
    if isinstance(b, Table):
        return _html_table(b)
    raise TypeError(type(b))


def _html_table(b: Table) -> str:
    def cell(tag: str, i: int, v: str) -> str:
        return (
            f'<{tag} class="num">{_e(v)}</{tag}>' if i in b.numeric else f"<{tag}>{_e(v)}</{tag}>"
        )

    head = "<tr>" + "".join(cell("th", i, h) for i, h in enumerate(b.headers)) + "</tr>"
    body = "".join(
        ('<tr class="hl">' if j in b.highlight else "<tr>")
        + "".join(cell("td", i, v) for i, v in enumerate(r))
        + "</tr>"
        for j, r in enumerate(b.rows)
    )
    tid = f' id="table-{b.name}"' if b.name else ""
    return (
        f'<div class="scroll"><table class="sortable"{tid}><thead>{head}</thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


# ---- Markdown --------------------------------------------------------------------------------


def _md(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def to_markdown(d: ReportData, sections: list[Section], fig_dir: str = "figures") -> str:
    out = [
        f"# autofuse report: study {d.study}",
        "",
        f"dataset {d.dataset.get('name', '?')} · objective {d.metric} ({d.direction}) · "
        f"generated {d.generated_at}",
        "",
        " · ".join(f"[{s.title}](#{s.id})" for s in sections),
        "",
    ]
    for s in sections:
        out += [f'<a id="{s.id}"></a>', "", f"## {s.title}", ""]
        for b in s.blocks:
            out += _md_block(b, fig_dir)
    return "\n".join(out)


def _md_block(b: Block, fig_dir: str) -> list[str]:
    """The lines of one block, a blank line after it."""
    if isinstance(b, P):
        return [f"*{b.text}*" if b.muted else b.text, ""]
    if isinstance(b, H3):
        return [f"### {b.text}", ""]
    if isinstance(b, KV):
        return [f"- **{k}:** {_md(v)}" for k, v in b.items] + [""]
    if isinstance(b, Pre):
        return ["```json", b.text, "```", ""]
    if isinstance(b, Fig):
        return [f"![{b.caption}]({fig_dir}/{b.name}.png)", ""]
    if isinstance(b, Table):
        rule = "|" + "|".join("---:" if i in b.numeric else "---" for i in range(len(b.headers)))
        return [
            "| " + " | ".join(_md(h) for h in b.headers) + " |",
            rule + "|",
            *("| " + " | ".join(_md(v) for v in r) + " |" for r in b.rows),
            "",
        ]
    raise TypeError(type(b))


# ---- files -----------------------------------------------------------------------------------


def render(d: ReportData, out_dir: Path) -> dict[str, Path]:
    """Write ``report.html``, ``report.md``, ``figures/*.png`` and ``report.json`` into ``out_dir``.

    Every file is written to a temporary name beside it and renamed into place, so a reader (a
    browser reloading the report) never sees half a file.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    for old in fig_dir.glob("*.png"):
        old.unlink()
    sections = build_sections(d)
    for s in sections:
        for b in s.blocks:
            if isinstance(b, Fig):
                with atomic_write(fig_dir / f"{b.name}.png") as tmp:
                    tmp.write_bytes(b.png)
    paths = {
        "html": out_dir / "report.html",
        "markdown": out_dir / "report.md",
        "data": out_dir / "report.json",
        "figures": fig_dir,
    }
    atomic_write_text(paths["html"], to_html(d, sections))
    atomic_write_text(paths["markdown"], to_markdown(d, sections))
    atomic_write_text(paths["data"], json_text(d.to_dict()))
    return paths


__all__ = ["render", "to_html", "to_markdown"]
