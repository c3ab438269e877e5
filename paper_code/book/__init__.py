"""The book wing: runs the book's notebooks and builds its site from what the experiments wing
computed (it never computes anything itself, and never imports torch).

- :mod:`.profiles` -- the parameters of a whole run (``profiles/*.yml``);
- :mod:`.toc` -- the table of contents and the order a run executes the pages in;
- :mod:`.runner` -- one notebook executed with papermill, only with the parameters it declares;
- :mod:`.reproduce` -- every notebook of a profile, one at a time or several at once
  (:func:`~paper_code.book.reproduce.reproduce`), then the site;
- :mod:`.schedule` -- elapsed and remaining time, threads of parallel notebooks;
- :mod:`.site` -- the build tree and ``jupyter-book build``;
- :mod:`.publish`, :mod:`.setup_cell`, :mod:`.sphinxext`, :mod:`.environments` -- publishing, the
  notebooks' set-up cell, MathJax served offline, Colab/Binder emulation;
- :mod:`.rehearsal` -- the paper-scale path rehearsed with random weights and synthetic data;
- :mod:`.torchrun` -- what each rank of a sharded run executes.

Import the submodules directly.
"""
