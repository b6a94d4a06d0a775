"""Helpers shared by the report tests."""

from __future__ import annotations

import re


def md_table(md: str, first_header: str) -> tuple[list[str], list[list[str]]]:
    """The first Markdown table whose header row starts with ``first_header``."""
    lines = md.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(f"| {first_header} |"):
            headers = [c.strip() for c in line.strip("|").split("|")]
            rows = []
            for row in lines[i + 2 :]:
                if not row.startswith("|"):
                    break
                rows.append([c.strip() for c in re.split(r"(?<!\\)\|", row.strip().strip("|"))])
            return headers, rows
    raise AssertionError(f"no table starting with {first_header!r}")
