"""Analysis of finished sweeps: collect result.json files, flag runs that cannot be trusted, fit
scaling laws with bootstrap CIs and minimum detectable effects, answer the paper's Figure 3, plot,
tabulate in the paper's layouts and render reports (HTML, Markdown, W&B).

Modules: collect (run folders -> table), quality (flagged runs), hints (sweep files' analysis: block),
fit / bootstrap (laws and intervals), analyze (series and fits), figure3 (the decisions), plots,
tables, report/ (spec, build, renderers). The MDE formula lives in harness/power.py (shared with the
sweep CLI's dry run).

Needs no GPU and never imports torch: it reads only run folders (docs/contracts.md §4-5).
"""
