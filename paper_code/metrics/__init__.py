r"""Evaluation metrics of the paper (Sections 4 and 5.3, App. B), batched, in pure torch on the
model's device.

Conventions shared by every metric:

* Images are ``[B, 3, H, W]`` in **[0, 1] pixel space** and maps ``[B, 1, H, W]`` in [0, 1]. Masking is
  :math:`x \odot S` on the [0, 1] image, *before* the model's own standardization (as in the official
  code, hanwei0912/OptiCAM; Section 5.2 and App. H), so a masked pixel is black. Use
  :func:`paper_code.models.without_standardization` for Table A.14.
* Every function returns **per-image** values (a ``[B]`` tensor, or a dict of them); the paper's number
  is their mean (:func:`summarize`). Values are in % where the paper reports %.
* Probabilities are ``softmax`` of the model's logits, computed in float64 so that :math:`1 - p` stays
  accurate for confident predictions (a project choice; the paper is silent).
* Forward passes run in chunks of ``batch_size`` images under ``torch.inference_mode``; ``progress=True``
  shows a tqdm bar (off by default).
* Every metric follows one template (:mod:`paper_code.metrics.base`, in the spirit of Quantus'
  ``Metric.__call__``): :class:`Evaluation` checks the inputs, resolves the classes, runs the
  evaluation forward in chunks on the images' device; the metric's own code is its formula.
* :func:`metric` registers each metric's name, direction, unit, equation and reference beside its
  code; :data:`METRICS` collects them, Quantus-style.
* Where the paper leaves an evaluation choice open, the metric takes a keyword option (a string,
  JSON-able for result keys) whose values include the reference code's: insertion/deletion's
  ``blur_kernel``, ``blur_padding``, ``substrate_space`` and ``tie_break``; AOPC's ``tie_break``;
  ADCC's ``masking_space`` and ``constant_maps``; Max-Sensitivity's ``unperturbed_maps``;
  BoxAcc's ``box_rule``. Each docstring gives both readings, the default and why.

Localization metrics (Appendix B) live in :mod:`paper_code.metrics.localization` and the bootstrap
intervals, paired comparisons, verdicts and run-to-run spread in :mod:`paper_code.metrics.uncertainty`;
both are re-exported here.
"""

from __future__ import annotations

from .base import METRICS, Evaluation, MetricInfo, class_probs, default_batch_size, metric
from .common import SPACES, mask_images, selectivity, space_origin, summarize
from .faithfulness import (
    aopc,
    blur_substrate,
    classification,
    insertion_deletion,
    rise_kernel1d,
    saliency_ranks,
    sampled_kernel1d,
)
from .localization import (
    box_accuracy,
    box_crop_probs,
    box_mask,
    box_variants,
    largest_component_box,
    localization,
    predicted_boxes,
    summarize_localization,
    threshold_boxes,
)
from .robustness import adcc, max_sensitivity, uniform_perturbation
from .uncertainty import (
    Interval,
    bootstrap_ci,
    paired_bootstrap_ci,
    paired_summary,
    run_spread,
    summarize_ci,
    verdict,
)

__all__ = [
    "Evaluation",
    "Interval",
    "METRICS",
    "MetricInfo",
    "SPACES",
    "adcc",
    "aopc",
    "blur_substrate",
    "bootstrap_ci",
    "box_accuracy",
    "box_crop_probs",
    "box_mask",
    "box_variants",
    "class_probs",
    "classification",
    "default_batch_size",
    "insertion_deletion",
    "largest_component_box",
    "localization",
    "mask_images",
    "max_sensitivity",
    "metric",
    "paired_bootstrap_ci",
    "paired_summary",
    "predicted_boxes",
    "rise_kernel1d",
    "run_spread",
    "saliency_ranks",
    "sampled_kernel1d",
    "selectivity",
    "space_origin",
    "summarize",
    "summarize_ci",
    "summarize_localization",
    "threshold_boxes",
    "uniform_perturbation",
    "verdict",
]
