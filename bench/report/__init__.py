"""docs/results.md from the study's JSONL files (bench/study.py writes them).

Everything in the report is computed from the JSONL lines, so it can be
regenerated at any point of a (resumable) study: tables say how many seeds
each cell has, and the reading is phrased from the numbers, not written by
hand, so it cannot drift from them.

One module per part of the document, each readable on its own:

- ``document``: the introduction, each grid's setup and caveats, ``write_report``;
- ``tables``: status, seeds per cell, accuracy and macro-F1 with averages, the verdict;
- ``stuck``: runs that did not learn;
- ``parameters``: trainable and live parameter counts;
- ``walltime``: time per cell;
- ``lrsearch``: the learning-rate search;
- ``heatmaps``: the rank heatmaps (the dashboard's figure, exported to PNG by kaleido);
- ``figure2``: the paper's Figure 2 observations against those heatmaps;
- ``generative``: the generative grid (ROUGE and perplexity on bbc-summary with SmolLM2);
- ``common``: names, number formats and one grid's loaded results (``GridResults``).

Every grid section is a ``section(results: GridResults) -> list[str]`` listed in
``document.GRID_SECTIONS``. The command line is ``bench/study_report.py``.
"""

from __future__ import annotations

from bench.report.document import write_report
from bench.report.figure2 import figure2_table, type_profile
from bench.report.heatmaps import rank_matrix
from bench.report.stuck import stuck_reading
from bench.report.tables import headline_verdict, metric_table, wins_reading

__all__ = [
    "figure2_table",
    "headline_verdict",
    "metric_table",
    "rank_matrix",
    "stuck_reading",
    "type_profile",
    "wins_reading",
    "write_report",
]
