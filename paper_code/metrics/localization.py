r"""Localization metrics of Appendix B (Tables A.7/A.8) and the box helpers of Table 5
(Section 5.4).

**Box convention** (a project choice; the paper is silent). A box is ``(x0, y0, x1, y1)`` in continuous
pixel coordinates of the 224×224 crop, pixel ``(row i, col j)`` covering :math:`[j, j+1)\times[i, i+1)`:
the pixel belongs to a box when its centre :math:`(j + ½, i + ½)` lies in
:math:`[x_0, x_1)\times[y_0, y_1)`. Box areas and IoUs are continuous, so the box of a set of pixels
(``x1 = last column + 1``) has exactly their pixel count as area. ILSVRC's inclusive integer boxes map to
this convention as ``(xmin, ymin, xmax + 1, ymax + 1)`` before the resize/crop.

**Ground truth** per image: a ``[n, 4]`` tensor (or list of 4-tuples). An image whose union mask
:math:`U` is empty (``n = 0``, or boxes cropped away) is **excluded** (``valid = False``, NaN
scores, never a hit) and counted by :func:`summarize_localization`; unlike Quantus' pointing game, an
empty mask never becomes a hit (Quantus ``PointingGame``: numpy casts the NaN it assigns to an
empty mask to ``True``).

**Connected components** use scipy.ndimage.label with 8-connectivity, one call per image on the CPU
(the only non-torch step of the package; the paper does not name its connectivity). The largest
component wins; ties go to the component met first in raster order. BoxAcc's
``box_rule="every_contour"`` (Choe et al.'s rule) also labels the holes, with 4-connectivity.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from ..methods.base import check_choice, check_maps
from .base import Evaluation, MetricInfo, metric

#: BoxAcc thresholds η: 100 evenly spaced values in [0, 1) (Choe et al. 2020 use a similar grid).
ETAS = tuple(i / 100 for i in range(100))
#: BoxAcc IoU thresholds δ (Choe et al. 2020, MaxBoxAccV2).
DELTAS = (0.3, 0.5, 0.7)
#: Lower bound on the box area fraction in SM (Dabkowski & Gal 2017).
SM_MIN_AREA = 0.05

_EIGHT = np.ones((3, 3), dtype=bool)

Boxes = Sequence[torch.Tensor | Sequence[Sequence[float]]]


def _as_boxes(boxes: Boxes, device: torch.device | str = "cpu") -> list[torch.Tensor]:
    out = []
    for bx in boxes:
        t = torch.as_tensor(bx, dtype=torch.float64, device=device).reshape(-1, 4)
        out.append(t)
    return out


def _size(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def box_mask(boxes: Boxes, size: int | tuple[int, int] = 224) -> torch.Tensor:
    """Union of each image's boxes as a float ``[B, 1, H, W]`` mask (1 inside, pixel-centre rule)."""
    h, w = _size(size)
    masks = []
    for bx in _as_boxes(boxes):
        cy = torch.arange(h, dtype=torch.float64) + 0.5
        cx = torch.arange(w, dtype=torch.float64) + 0.5
        iny = (cy >= bx[:, 1:2]) & (cy < bx[:, 3:4])  # [n, H]
        inx = (cx >= bx[:, 0:1]) & (cx < bx[:, 2:3])  # [n, W]
        masks.append((iny[:, :, None] & inx[:, None, :]).any(0))
    if not masks:
        return torch.zeros(0, 1, h, w)
    return torch.stack(masks)[:, None].float()


def box_variants(maps: torch.Tensor, box_masks: torch.Tensor) -> dict[str, torch.Tensor]:
    r"""The four maps of Table 5 (Section 5.4), to be scored with AD/AG/AI:

    ``"S := B"`` the box mask :math:`B`; ``"S := I∖B"`` its complement :math:`1 - B`; ``"B∩S"`` the
    product :math:`S\cdot B`; ``"S∖B"`` the product :math:`S\cdot(1 - B)`.
    """
    bm = box_masks.to(maps)
    return {"S := B": bm, "S := I∖B": 1 - bm, "B∩S": maps * bm, "S∖B": maps * (1 - bm)}


def largest_component_box(
    mask: np.ndarray | torch.Tensor,
) -> tuple[float, float, float, float] | None:
    """Box ``(x0, y0, x1, y1)`` of the largest 8-connected component of a 2-D bool mask (None if empty)."""
    m = mask.cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    labels, n = ndimage.label(m, structure=_EIGHT)
    if n == 0:
        return None
    best = int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    sl = ndimage.find_objects(labels)[best - 1]
    return (float(sl[1].start), float(sl[0].start), float(sl[1].stop), float(sl[0].stop))


def _stack_boxes(masks: np.ndarray) -> np.ndarray:
    """Largest-component boxes of a stack ``[K, H, W]`` of masks in one label call -> ``[K, 4]`` (0 if empty)."""
    struct = np.zeros((3, 3, 3), dtype=bool)
    struct[1] = _EIGHT  # 8-connectivity inside each slice, none across slices
    labels = np.empty(masks.shape, dtype=np.int64)  # int64: np.bincount would cast int32 (slow)
    n = ndimage.label(masks, structure=struct, output=labels)
    boxes = np.zeros((masks.shape[0], 4))
    if n == 0:
        return boxes
    counts = np.bincount(labels.ravel())[1:]
    objs = ndimage.find_objects(labels)
    k = np.array([o[0].start for o in objs])
    ids = np.arange(n)
    order = np.lexsort((ids, -counts, k))  # by slice, then size (desc), then raster order
    first = order[np.unique(k[order], return_index=True)[1]]
    for lab in first:
        o = objs[lab]
        boxes[o[0].start] = (o[2].start, o[1].start, o[2].stop, o[1].stop)
    return boxes


#: How BoxAcc draws boxes around a thresholded map.
BOX_RULES = ("largest_component", "every_contour")


def _stack_contour_boxes(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of **every contour** of each mask of a stack ``[K, H, W]``, as OpenCV's
    ``findContours(RETR_TREE)`` + ``boundingRect`` would draw them, in one pass per kind of contour.

    ``RETR_TREE`` returns the outer border of every 8-connected foreground component (its box is the
    component's box) and the border of every hole, a 4-connected background component that does not
    reach the image border (OpenCV pads the image with a frame of zeros); a hole's border runs over
    the foreground pixels around it, so its box is the hole's box grown by one pixel on each side.
    (Checked against OpenCV on thousands of random masks in ``tests/test_protocol_options.py``; OpenCV
    itself is not a dependency.) Returns ``(boxes [M, 4], slice index [M])``.
    """
    k, h, w = masks.shape
    eight = np.zeros((3, 3, 3), dtype=bool)
    eight[1] = _EIGHT
    four = np.zeros((3, 3, 3), dtype=bool)
    four[1] = ndimage.generate_binary_structure(2, 1)
    labels = np.empty(masks.shape, dtype=np.int64)
    boxes: list[tuple[int, int, int, int]] = []
    ids: list[int] = []
    ndimage.label(masks, structure=eight, output=labels)
    for o in ndimage.find_objects(labels):
        boxes.append((o[2].start, o[1].start, o[2].stop, o[1].stop))
        ids.append(o[0].start)
    ndimage.label(~masks, structure=four, output=labels)
    for o in ndimage.find_objects(labels):
        if o[1].start == 0 or o[2].start == 0 or o[1].stop == h or o[2].stop == w:
            continue  # reaches the border: outside, not a hole
        boxes.append((o[2].start - 1, o[1].start - 1, o[2].stop + 1, o[1].stop + 1))
        ids.append(o[0].start)
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(ids, dtype=np.int64)


def threshold_boxes(
    maps: torch.Tensor, etas: Sequence[float] = ETAS, box_rule: str = "largest_component"
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    r"""The candidate boxes :math:`\mathcal B^\eta_p` of BoxAcc for every map ``[B, 1, H, W]`` and every
    threshold :math:`\eta`: per image a pair ``(boxes [M, 4], eta index [M])`` (float64, CPU).

    The thresholded set is :math:`\{S > \eta\}`, compared in the maps' own dtype; ``box_rule``:

    * ``"largest_component"``: one box per :math:`\eta`, around its largest 8-connected component
      (none when the set is empty);
    * ``"every_contour"``: a box around every contour, as Choe et al.'s MaxBoxAccV2 (clovaai/
      wsolevaluation, ``multi_contour_eval``): every component and every hole
      (:func:`_stack_contour_boxes`).
    """
    check_choice("box_rule", box_rule, BOX_RULES)
    raw = maps.detach().cpu()
    eta_t = torch.as_tensor(
        list(etas), dtype=raw.dtype if raw.is_floating_point() else torch.float64
    )
    out = []
    for i in range(raw.shape[0]):
        stack = (raw[i, 0][None] > eta_t[:, None, None]).numpy()
        if box_rule == "largest_component":
            bx = _stack_boxes(stack)
            keep = np.flatnonzero((bx[:, 2] > bx[:, 0]) & (bx[:, 3] > bx[:, 1]))
            out.append((torch.from_numpy(bx[keep]), torch.from_numpy(keep)))
        else:
            bx, k = _stack_contour_boxes(stack)
            out.append((torch.from_numpy(bx), torch.from_numpy(k)))
    return out


def predicted_boxes(maps: torch.Tensor) -> torch.Tensor:
    r"""Predicted box :math:`B_p` per map ``[B, 1, H, W]`` -> ``[B, 4]`` (float64, CPU).

    The box of the largest component of :math:`\{S \ge \bar S\}`, :math:`\bar S` the map's mean
    (Appendix B). We use :math:`\ge` (the paper says "threshold at the mean"): the set is never empty
    (it contains the maximum), and a constant map gives the whole image.
    """
    m = maps.detach().double().cpu()
    mean = m.flatten(1).mean(1).view(-1, 1, 1, 1)
    return torch.from_numpy(_stack_boxes((m >= mean)[:, 0].numpy()))


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of boxes ``a [..., 4]`` and ``b [..., 4]`` (broadcast; continuous areas; 0 when both empty)."""
    iw = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    ih = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0)
    inter = iw * ih
    area = lambda x: (x[..., 2] - x[..., 0]).clamp(min=0) * (x[..., 3] - x[..., 1]).clamp(min=0)  # noqa: E731
    union = area(a) + area(b) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-300), torch.zeros_like(union))


def box_crop_probs(
    model: nn.Module,
    images: torch.Tensor,
    boxes: torch.Tensor,
    classes: torch.Tensor | Sequence[int],
    *,
    batch_size: int = 64,
) -> torch.Tensor:
    r"""Softmax probability (float64) of ``classes`` on each image cropped to its box ``[B, 4]`` and
    resized back to the input size (bilinear, ``torchvision.ops.roi_align`` with ``aligned=True``,
    one sample per output pixel), for the SM's :math:`p_c` in Dabkowski & Gal's definition. A
    whole-image box reproduces the image exactly, so :math:`p_c` is then the plain probability.

    >>> import paper_code
    >>> model, x = paper_code.load_model("tiny"), torch.rand(2, 3, 224, 224)
    >>> p = box_crop_probs(model, x, torch.tensor([[0, 0, 224, 224], [10, 20, 110, 120.0]]), [3, 5])
    >>> p.dtype, tuple(p.shape)
    (torch.float64, (2,))
    """
    from torchvision.ops import roi_align

    # The network's plain forward (standard memory layout, never compiled), as the SM has always
    # been computed here.
    ev = Evaluation(model, images, batch_size=batch_size, compile=False, channels_last=False)
    b, _, h, w = images.shape
    rois = torch.cat([torch.arange(b, dtype=torch.float64)[:, None], boxes.double().cpu()], 1)
    rois = rois.to(images)

    def crops(sl: slice) -> torch.Tensor:
        r = rois[sl].clone()
        r[:, 0] -= sl.start
        return roi_align(images[sl], r, (h, w), 1.0, 1, aligned=True)

    return ev.probs(crops, ev.classes(classes), desc="SM crops")


#: Where the localization metrics are defined (the paper's Appendix B, Tables A.7/A.8).
_APP_B = "Zhang et al. 2024 (Opti-CAM), App. B"


@metric(
    OM=MetricInfo(
        "Official metric", "lower", "%", "App. B", "localization",
        reference=_APP_B + " (ILSVRC localization)",
    ),
    LE=MetricInfo(
        "Localization error", "lower", "%", "App. B", "localization",
        reference=_APP_B + " (ILSVRC localization)",
    ),
    F1=MetricInfo("Pixel-wise F1", "higher", "%", "App. B", "localization", reference=_APP_B),
    SP=MetricInfo(
        "Standard pointing", "higher", "%", "App. B", "localization",
        reference="Zhang et al. 2018 (excitation backprop, pointing game)",
    ),
    EP=MetricInfo(
        "Energy pointing", "higher", "%", "App. B", "localization",
        reference="Wang et al. 2020 (Score-CAM, energy-based pointing game)",
    ),
    SM=MetricInfo(
        "Saliency metric", "lower", "log-ratio", "App. B", "localization",
        reference="Dabkowski & Gal 2017",
    ),
)  # fmt: skip
def localization(
    maps: torch.Tensor,
    boxes: Boxes,
    *,
    pred_correct: torch.Tensor | Sequence[bool] | None = None,
    probs: torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None = None,
    etas: Sequence[float] = ETAS,
    deltas: Sequence[float] = DELTAS,
    box_rule: str = "largest_component",
) -> dict[str, torch.Tensor]:
    r"""Localization metrics of Appendix B, per image, for maps ``[B, 1, H, W]`` of the GT class.

    With :math:`\mathfrak B` the GT boxes, :math:`U` their union, :math:`B_p` = :func:`predicted_boxes`
    and :math:`\mathrm{IoU}^* = \max_{B\in\mathfrak B}\mathrm{IoU}(B, B_p)`:

    * ``LE`` :math:`= (1 - \mathrm{IoU}^*)\cdot 100` (↓);
    * ``OM`` :math:`= (1 - \mathrm{IoU}^*\cdot\mathbb 1[c_p = c])\cdot 100` (↓), only if ``pred_correct``
      (bool ``[B]``, predicted class = GT) is given, else NaN;
    * ``P`` :math:`= \sum_{U} S / \sum S`, ``R`` :math:`= \sum_U S / |U|`, ``F1`` :math:`= 2PR/(P+R)`,
      in % (↑); ``EP`` (energy pointing) = P in % (↑). :math:`0/0 := 0`;
    * ``SP`` :math:`= \mathbb 1[\exists p \in \arg\max S,\ p \in U]\cdot 100` (↑): a hit if **any**
      maximal pixel is in :math:`U` (exact ties), which gives Fake-CAM ≈ 100 as in Table A.7;
    * ``SM`` :math:`= \log\max(0.05, |B_p|/(hw)) - \log p_c` (natural log, ↓), only if ``probs`` is
      given: a ``[B]`` tensor of :math:`p_c`, or a callable ``pred_boxes -> p_c`` such as
      ``lambda bx: box_crop_probs(model, images, bx, classes)`` (Dabkowski & Gal's crop-and-classify);
      else NaN;
    * ``box_hits`` bool ``[B, len(etas), len(deltas)]``: :math:`\max_{B' \in \mathcal B^\eta_p}
      \max_B \mathbb 1[\mathrm{IoU}(B', B)\ge\delta]` over the candidate boxes
      :math:`\mathcal B^\eta_p` of :math:`\{S > \eta\}` (:func:`threshold_boxes`; none if empty: a
      miss). BoxAcc is dataset-level, see :func:`box_accuracy`. Maps are used as given (in [0, 1]);
      they are not re-normalized.

    ``box_rule`` (the candidates of BoxAcc only; :math:`B_p` of LE/OM/SM is always the largest
    component of :math:`\{S \ge \bar S\}`):

    * ``"largest_component"`` (default): one box, around the largest 8-connected component, as the
      paper's Appendix B describes its predicted box ("bounding box of the largest connected
      component"), which it applies to BoxAcc too.
    * ``"every_contour"``: Choe et al.'s MaxBoxAccV2 code (clovaai/wsolevaluation, ``evaluation.py``
      with ``multi_contour_eval``) draws a box around every contour of the thresholded map
      (``cv2.findContours(RETR_TREE, CHAIN_APPROX_SIMPLE)``, ``boundingRect``) and keeps the best IoU:
      every component and every hole here. Never lower than the default (its candidates include the
      largest component); higher when a smaller blob, or a hole's rim, fits a GT box better (several
      objects, fragmented maps). Only the candidate rule is Choe's: their code also quantizes the map
      to uint8, thresholds at a fraction of its maximum, clips boxes to ``width - 1`` and counts box
      sides inclusively (+1) in the IoU; we keep this module's thresholds, box convention and IoU
      for both rules, so that they differ by the rule alone.

    Excluded images (empty :math:`U`) get NaN scores and no hits; ``valid`` says which.

    Notes on the paper: its Fake-CAM row (F1 57.7, EP 28.5) is not consistent with EP = P literally
    (Appendix B, Table A.7); we implement the stated definitions.

    Returns:
        dict of ``[B]`` float64 tensors ``OM LE F1 SP EP SM P R IoU`` plus ``valid`` (bool),
        ``pred_box`` ``[B, 4]`` and ``box_hits``; all on the CPU.

    A map that is hot exactly on the box localizes it perfectly:

    >>> maps = torch.zeros(1, 1, 8, 8)
    >>> maps[..., 2:4, 2:4] = 1
    >>> r = localization(maps, [[[2, 2, 4, 4]]], etas=(0.0, 0.5))
    >>> r["LE"].tolist(), r["F1"].tolist(), r["SP"].tolist(), r["EP"].tolist()
    ([0.0], [100.0], [100.0], [100.0])
    >>> box_accuracy(r["box_hits"], r["valid"])["BoxAcc"]
    100.0
    """
    check_maps(maps)
    check_choice("box_rule", box_rule, BOX_RULES)
    b, _, h, w = maps.shape
    gt = _as_boxes(boxes)
    if len(gt) != b:
        raise ValueError(f"need one box list per map ({b}), got {len(gt)}")
    s = maps.detach().double().cpu()
    u = box_mask(gt, (h, w)).double() if b else torch.zeros(0, 1, h, w, dtype=torch.float64)
    valid = u.flatten(1).sum(1) > 0
    nan = torch.full((b,), float("nan"), dtype=torch.float64)

    # Pixel-wise precision / recall / F1, energy pointing.
    total = s.flatten(1).sum(1)
    inside = (s * u).flatten(1).sum(1)
    area_u = u.flatten(1).sum(1)
    prec = torch.where(total > 0, inside / total.clamp(min=1e-300), torch.zeros_like(total))
    rec = torch.where(area_u > 0, inside / area_u.clamp(min=1), torch.zeros_like(total))
    f1 = torch.where(prec + rec > 0, 2 * prec * rec / (prec + rec).clamp(min=1e-300), 0 * prec)

    # Pointing game with ties.
    flat = s.flatten(1)
    is_max = flat == flat.amax(1, keepdim=True)
    sp = (is_max & (u.flatten(1) > 0)).any(1).double()

    # Predicted box, LE, OM, SM.
    pred = predicted_boxes(s)
    iou = (
        torch.stack(
            [
                box_iou(pred[i], g).max() if len(g) else torch.tensor(0.0, dtype=torch.float64)
                for i, g in enumerate(gt)
            ]
        )
        if b
        else nan.clone()
    )
    le = (1 - iou) * 100
    if pred_correct is not None:
        ok = torch.as_tensor(pred_correct).bool().reshape(-1).cpu()
        om = (1 - iou * ok.double()) * 100
    else:
        om = nan.clone()
    if probs is not None:
        p = probs(pred) if callable(probs) else probs
        p = torch.as_tensor(p).double().reshape(-1).cpu()
        frac = ((pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1])) / (h * w)
        sm = torch.log(frac.clamp(min=SM_MIN_AREA)) - torch.log(p)
    else:
        sm = nan.clone()

    # BoxAcc hit tables (thresholds compared in the maps' own dtype: 0.4f > 0.4 is False).
    delta_t = torch.as_tensor(list(deltas), dtype=torch.float64)
    hits = torch.zeros(b, len(etas), len(delta_t), dtype=torch.bool)
    candidates = threshold_boxes(maps.detach().cpu()[valid], etas, box_rule)
    for i, (bx, eta_index) in zip(valid.nonzero()[:, 0].tolist(), candidates, strict=True):
        best = torch.zeros(len(etas), dtype=torch.float64)  # no box: IoU 0
        if len(bx) and len(gt[i]):
            box_best = box_iou(bx[:, None], gt[i][None]).amax(1)  # [M]
            best.scatter_reduce_(0, eta_index, box_best, "amax")
        hits[i] = best[:, None] >= delta_t[None] - 1e-12  # IoU exactly δ counts (float guard)

    out = {
        "OM": om, "LE": le, "F1": f1 * 100, "SP": sp * 100, "EP": prec * 100, "SM": sm,
        "P": prec, "R": rec, "IoU": iou,
    }  # fmt: skip
    for k in out:
        out[k] = torch.where(valid, out[k], nan)
    out.update(valid=valid, pred_box=pred, box_hits=hits)
    return out


@metric(
    BoxAcc=MetricInfo(
        "MaxBoxAccV2", "higher", "%", "App. B", "localization",
        reference="Choe et al. 2020; clovaai/wsolevaluation",
    )
)  # fmt: skip
def box_accuracy(
    box_hits: torch.Tensor, valid: torch.Tensor | None = None, deltas: Sequence[float] = DELTAS
) -> dict[str, object]:
    r"""MaxBoxAccV2 from per-image hit tables ``[N, n_eta, n_delta]`` (concatenate batches first):

    .. math:: \mathrm{BoxAcc} = \frac{1}{|\Delta|}\sum_{\delta\in\Delta}\max_\eta
              \frac{1}{N}\sum_i \mathrm{hit}_i(\eta, \delta)\cdot 100

    over valid images only. Returns ``BoxAcc`` (float, %), ``per_delta`` (tensor, %) and ``best_eta``
    (index of the maximizing η per δ).

    >>> hits = torch.zeros(4, 2, 3, dtype=torch.bool)
    >>> hits[:3, 1] = True  # 3 of 4 images hit at the second threshold, for every delta
    >>> box_accuracy(hits)["BoxAcc"]
    75.0
    """
    hits = box_hits if valid is None else box_hits[torch.as_tensor(valid).bool()]
    if hits.shape[0] == 0:
        return {"BoxAcc": float("nan"), "per_delta": torch.full((len(deltas),), float("nan"))}
    acc = hits.double().mean(0)  # [n_eta, n_delta]
    best, arg = acc.max(0)
    return {"BoxAcc": float(best.mean() * 100), "per_delta": best * 100, "best_eta": arg}


def summarize_localization(results: dict[str, torch.Tensor]) -> dict[str, float]:
    """Dataset-level localization numbers: means over valid images, BoxAcc, and the counts
    ``n_images`` / ``n_excluded`` (images without a usable GT box)."""
    valid = results["valid"]
    out = {
        k: float(results[k][valid].nanmean()) if valid.any() else float("nan")
        for k in ("OM", "LE", "F1", "SP", "EP", "SM")
    }
    out["BoxAcc"] = box_accuracy(results["box_hits"], valid)["BoxAcc"]
    out["n_images"] = int(valid.sum())
    out["n_excluded"] = int((~valid).sum())
    return out
