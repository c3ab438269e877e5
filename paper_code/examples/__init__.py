"""Examples of code a user writes against ``paper_code``: not imported by the package.

- :mod:`.centre_prior` -- a saliency method from outside the package (a plugin), in no paper: the
  book's page "Evaluate your own method" runs it through the paper's protocol.
"""
