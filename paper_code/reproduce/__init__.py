"""Layer 4: the reproduction of the paper's tables and figures.

- :mod:`.experiments` -- the resumable loop every notebook uses (maps from a shared cache, per-image
  rows);
- :mod:`.results` -- the storage it writes (per-image map files, append-only CSV tables);
- :mod:`.paper` -- the paper's values, the comparison beside ours, provenance captions;
- :mod:`.notebooks` -- profiles, papermill execution and the Jupyter Book build;
- :mod:`.sphinxext` -- serves MathJax from a package in the built site.

Import the submodules directly; this package imports nothing heavy so that the orchestrator
(``python -m paper_code reproduce``) does not load torch.
"""
