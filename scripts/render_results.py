#!/usr/bin/env python
"""Regenerate the benchmark tables of README.md from the committed JSON.

    python scripts/render_results.py            # rewrite every generated block in README.md
    python scripts/render_results.py --check    # exit 1 (and show the difference) if one is stale

A generated block sits between two marker comments, and the opening one names its source:

    <!-- bench-table: benches/results/X.json -->
    (fastgan.bench.report.markdown_table of X: one run, one table)
    <!-- /bench-table -->

    <!-- bench-compare: benches/results/A.json benches/results/B.json -->
    (fastgan.bench.report.compare_table: each fastgan row against the baselines of the same case,
     each ratio marked same-run or cross-run)
    <!-- /bench-compare -->

Paths are relative to the repository root. Text outside the blocks is left as it is.
"""
from __future__ import annotations

import argparse
import difflib
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"<!-- (bench-table|bench-compare): ([^>]*?) -->\n.*?<!-- /\1 -->", re.S)


def render_block(kind: str, args: str, root: Path = REPO) -> str:
    """The whole block, markers included, for ``<!-- kind: args -->``."""
    from fastgan.bench.report import compare_table, markdown_table

    paths = args.split()
    if kind == "bench-table":
        if len(paths) != 1:
            raise ValueError(f"bench-table takes one JSON path, got {args!r}")
        body = f"Source: `{paths[0]}`.\n\n" + markdown_table(root / paths[0])
    else:
        body = compare_table([root / p for p in paths])
    return f"<!-- {kind}: {args} -->\n{body}<!-- /{kind} -->"


def render(text: str, root: Path = REPO) -> str:
    """``text`` with every generated block rendered again from its source."""
    return BLOCK.sub(lambda m: render_block(m.group(1), m.group(2), root), text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="report stale blocks, change nothing")
    ap.add_argument("readme", nargs="?", default=str(REPO / "README.md"))
    a = ap.parse_args(argv)
    path = Path(a.readme)
    text = path.read_text()
    new = render(text)
    if not BLOCK.search(text):
        print(f"{path}: no generated blocks", file=sys.stderr)
        return 1
    if new == text:
        print(f"{path}: benchmark tables up to date")
        return 0
    if a.check:
        sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), new.splitlines(True), str(path),
                                                   f"{path} (rendered)"))
        print(f"{path}: benchmark tables are stale; run python scripts/render_results.py", file=sys.stderr)
        return 1
    path.write_text(new)
    print(f"{path}: benchmark tables rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
