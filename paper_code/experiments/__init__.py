"""The experiments wing: the paper's protocol run on a network and a dataset, and its results.

- :mod:`.loop` -- the resumable loop every page uses: batches of images, saliency maps from a
  shared cache, per-image rows appended as they are computed (:func:`setup`, :func:`run_rows`);
- :mod:`.keys` -- what identifies a result (:func:`result_key`, :func:`config_id`), so that no
  row is ever reused under another configuration;
- :mod:`.sources` -- the data of a run (sample, ImageNet, folders, the medical datasets);
- :mod:`.results` -- the storage (:class:`MapCache`, :class:`ResultTable`);
- :mod:`.distributed` -- sharding over ``torchrun`` ranks;
- :mod:`.tablerun` -- :class:`TableRun`, the bookkeeping of one table, and its claim checks;
- :mod:`.scores` -- what each table computes per batch, and the open protocol choices;
- :mod:`.display` -- the tables beside the paper's, the verdict sentence, glued values;
- :mod:`.paper` -- the paper's transcribed tables and the provenance captions;
- :mod:`.report`, :mod:`.sensitivity` -- the reproducibility report and the protocol-sensitivity
  page.

The names below are importable from the package (``from paper_code import experiments as ex;
ex.setup(...)``); they load their module on first use, so that importing one light module (the
paper's tables) never loads torch.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name -> the module of this package that defines it.
_EXPORTS = {
    **dict.fromkeys(
        ["Batch", "CPU_AUTO_BATCH", "TARGET_RULES", "batch_for_memory", "batches", "cached_maps",
         "fill_rules", "resolve_batch_size",
         "run_rows", "setup", "target_classes"], "loop"),
    **dict.fromkeys(
        ["config_id", "map_key", "method_options", "model_key", "model_weights", "opticam_iterations",
         "result_key"],
        "keys"),
    **dict.fromkeys(
        ["MEDICAL_DATASETS", "MEDICAL_MODELS", "checkpoint_path", "dataset_ids", "medical_plan",
         "medical_root", "open_dataset"], "sources"),
    **dict.fromkeys(["MapCache", "ResultTable", "key_hash"], "results"),
    **dict.fromkeys(
        ["TableRun", "paper_methods", "table_methods"], "tablerun"),
    **dict.fromkeys(
        ["LOCALIZATION_METRICS", "PROTOCOL_OPTIONS", "Score", "classification_scores",
         "curve_points", "insertion_deletion_scores", "localization_scores",
         "localization_summary", "pack_hits", "protocol_options", "table4_scores",
         "unpack_hits"], "scores"),
    **dict.fromkeys(
        ["arrow", "beside_paper", "commit_link", "glue", "headline", "ranking_agreement",
         "relative_path", "show", "with_interval"], "display"),
    **dict.fromkeys(
        ["COMPARISON_TABLES", "PAPER_MODELS", "PAPER_NETWORK", "TRANSFORMER_NETWORK", "caption",
         "methods_not_in_paper", "paper_label", "paper_network", "paper_table", "provenance"],
        "paper"),
}  # fmt: skip

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
