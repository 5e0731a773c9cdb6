"""docs/results.md from the study's JSONL files (bench/study.py writes them).

    .venv/bin/python bench/study_report.py [--results docs/results] [--out docs/results.md]

The command line of ``bench.report``, which builds the document (one module per
section). The rank heatmaps are the dashboard's own figure
(``dashboard.figures.compare_rank_heatmaps``) exported to PNG with kaleido,
which drives the system Chromium headless.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import write_report  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Write docs/results.md from the study's JSONL files."
    )
    parser.add_argument("--results", type=Path, default=ROOT / "docs" / "results")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results.md")
    args = parser.parse_args(argv)
    if not args.results.is_dir():
        print(
            f"study_report: error: {args.results} does not exist; run bench/study.py first",
            file=sys.stderr,
        )
        return 2
    print(write_report(args.results, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
