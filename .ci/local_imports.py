"""Count the function-local imports in autofuse/ (each should be an optional or heavy import
kept out of a cheap path, with a comment saying so). Prints them; `--max N` fails above N."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "autofuse"


def local_imports() -> list[tuple[str, int, str, str]]:
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines))
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    mod = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                    line = lines[node.lineno - 1]
                    prev = lines[node.lineno - 2] if node.lineno > 1 else ""
                    why = (
                        line.split("#", 1)[1].strip()
                        if "#" in line
                        else (prev.split("#", 1)[1].strip() if prev.strip().startswith("#") else "")
                    )
                    out.append((str(path.relative_to(ROOT.parent)), node.lineno, mod or "", why))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max", type=int, default=None)
    args = ap.parse_args()
    found = local_imports()
    for f, n, mod, why in found:
        print(f"{f}:{n}: {mod}{'  # ' + why if why else ''}")
    print(f"{len(found)} function-local imports")
    if args.max is not None and len(found) > args.max:
        raise SystemExit(f"more function-local imports than allowed ({len(found)} > {args.max})")


if __name__ == "__main__":
    main()
