"""Analysis of finished sweeps: collect result.json files, fit scaling laws with bootstrap CIs,
plot, tabulate in the paper's layouts and render reports (HTML, Markdown, W&B).

Needs no GPU and never imports torch: it reads only run folders (docs/contracts.md §4-5).
"""
