"""Glue for the PP-OCR model family (text detection -> direction classification -> recognition),
as its ONNX files are published (e.g. in the ``rapidocr-onnxruntime`` wheel).

The family's own pipeline does its pre- and post-processing in Python around
three ONNX models; here the same steps are edgecoe transforms, so the three
models are three experts of one package, scheduled and cached like any other:

- ``ocr_page`` (prepare of the detector): a BGR page -> the detector's input
  (resized to multiples of 32, shortest side at least ``limit_side_len``,
  normalised to [-1, 1]), and the page as the detector saw it;
- ``ocr_boxes`` (prepare of the classifier): the detector's probability map ->
  text boxes (Differentiable Binarization post-processing: threshold, dilate,
  contours, minimum-area rectangles scored on the map, polygon expansion),
  sorted top to bottom then left to right; each box is cropped upright from the
  page and becomes one item (fan-out), with the classifier's input;
- ``ocr_upright`` (prepare of the recogniser): turns the crop 180 degrees where
  the classifier is confident it is upside down, and sizes it for the recogniser;
- ``ocr_text`` (finish of the recogniser): greedy CTC decoding with the
  character list the recogniser's ONNX file carries in its metadata.

Defaults follow the family's published configuration (rapidocr-onnxruntime
1.4.4); each can be changed through the step's ``args``. Needs OpenCV,
pyclipper and shapely (``pip install 'edgecoe[apps]'``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgecoe.transforms import TransformCall, TransformError


def _cv2() -> Any:
    try:
        import cv2
    except ImportError as exc:
        raise TransformError("needs OpenCV: pip install 'edgecoe[apps]'") from exc
    return cv2


def _arg(call: TransformCall, name: str, default: Any) -> Any:
    return call.args.get(name, default)


# -- the page, as the detector sees it ---------------------------------------------------------------

def _resize_to_32(image: np.ndarray, ratio: float) -> np.ndarray:
    """Scale by ``ratio`` and round each side to a multiple of 32 (what the detector's strides need)."""
    cv2 = _cv2()
    h, w = image.shape[:2]
    new_h = int(round(int(h * ratio) / 32) * 32)
    new_w = int(round(int(w * ratio) / 32) * 32)
    if new_h <= 0 or new_w <= 0:
        raise TransformError(f"page of {h}x{w} pixels is too small to detect text in")
    return np.asarray(cv2.resize(image, (new_w, new_h)))


def _page_for_detection(image: np.ndarray, *, max_side: int, min_side: int, min_height: int,
                        max_aspect: float) -> tuple[np.ndarray, float, float, int]:
    """The page bounded in size, and letterboxed when very flat. Returns (page, ratio_h, ratio_w, top pad)."""
    cv2 = _cv2()
    h, w = image.shape[:2]
    ratio_h = ratio_w = 1.0
    if max(h, w) > max_side:
        image = _resize_to_32(image, max_side / max(h, w))
        ratio_h, ratio_w = h / image.shape[0], w / image.shape[1]
    h2, w2 = image.shape[:2]
    if min(h2, w2) < min_side:
        image = _resize_to_32(image, min_side / min(h2, w2))
        ratio_h, ratio_w = h2 / image.shape[0], w2 / image.shape[1]
    h3, w3 = image.shape[:2]
    top = 0
    if h3 <= min_height or (max_aspect > 0 and w3 / h3 > max_aspect):
        target = max(int(w3 / max_aspect), min_height) * 2
        top = int(abs(target - h3) / 2)
        image = cv2.copyMakeBorder(image, top, top, 0, 0, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    return image, ratio_h, ratio_w, top


def ocr_page(call: TransformCall) -> dict[str, np.ndarray]:
    """Prepare of the detector: ``x`` (its input), ``page`` (the page it sees), ``geometry``
    (ratio_h, ratio_w, top padding, original height, original width: to map boxes back)."""
    image = np.asarray(call.input(_arg(call, "input", "image")))
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise TransformError(f"expects a BGR page of uint8 [height, width, 3], got {image.dtype}{list(image.shape)}")
    page, ratio_h, ratio_w, top = _page_for_detection(
        image, max_side=int(_arg(call, "max_side_len", 2000)), min_side=int(_arg(call, "min_side_len", 30)),
        min_height=int(_arg(call, "min_height", 30)), max_aspect=float(_arg(call, "width_height_ratio", 8)))
    limit = int(_arg(call, "limit_side_len", 736))
    h, w = page.shape[:2]
    scaled = _resize_to_32(page, limit / min(h, w) if min(h, w) < limit else 1.0)
    # NOTE: float64 arithmetic, then float32, as the family normalises: a map a rounding apart can
    # move a box by a pixel.
    half = np.array([0.5, 0.5, 0.5])
    x = (scaled.astype(np.float32) * (1 / 255.0) - half) / half
    geometry = np.array([ratio_h, ratio_w, top, image.shape[0], image.shape[1]], dtype=np.float64)
    return {"x": x.transpose(2, 0, 1).astype(np.float32), "page": page, "geometry": geometry}


# -- boxes from the detector's map ------------------------------------------------------------------

def _min_area_box(contour: np.ndarray) -> tuple[np.ndarray, float]:
    """The minimum-area rectangle around ``contour``: corners clockwise from top-left, and its short side."""
    cv2 = _cv2()
    rect = cv2.minAreaRect(contour)
    p = sorted(cv2.boxPoints(rect), key=lambda point: point[0])
    # NOTE: on a tie in y the later point counts as the upper one, as in the family's code: the same
    # corners in the same order, or a crop may start from another corner.
    top_left, bottom_left = (p[0], p[1]) if p[1][1] > p[0][1] else (p[1], p[0])
    top_right, bottom_right = (p[2], p[3]) if p[3][1] > p[2][1] else (p[3], p[2])
    box = np.array([top_left, top_right, bottom_right, bottom_left])
    return box, float(min(rect[1]))


def _mean_score(prob: np.ndarray, box: np.ndarray) -> float:
    """Mean of the probability map inside the box (the "fast" score)."""
    cv2 = _cv2()
    h, w = prob.shape
    x0 = int(np.clip(np.floor(box[:, 0].min()), 0, w - 1))
    x1 = int(np.clip(np.ceil(box[:, 0].max()), 0, w - 1))
    y0 = int(np.clip(np.floor(box[:, 1].min()), 0, h - 1))
    y1 = int(np.clip(np.ceil(box[:, 1].max()), 0, h - 1))
    mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), dtype=np.uint8)
    shifted = box - np.array([x0, y0], dtype=box.dtype)
    cv2.fillPoly(mask, shifted.reshape(1, -1, 2).astype(np.int32), 1)
    return float(cv2.mean(prob[y0:y1 + 1, x0:x1 + 1], mask)[0])


def _expand(box: np.ndarray, ratio: float) -> np.ndarray:
    """Grow the polygon outward by area * ratio / perimeter (text maps are drawn shrunk)."""
    import pyclipper
    from shapely.geometry import Polygon

    polygon = Polygon(box)
    distance = polygon.area * ratio / polygon.length
    offset = pyclipper.PyclipperOffset()
    offset.AddPath(box, pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    return np.array(offset.Execute(distance)).reshape(-1, 1, 2)


def detect_boxes(prob: np.ndarray, page_shape: tuple[int, int], *, thresh: float = 0.3, box_thresh: float = 0.5,
                 unclip_ratio: float = 1.6, max_candidates: int = 1000, dilate: bool = True) -> list[np.ndarray]:
    """Text boxes (4 x 2 corners, page pixels) from a [H, W] probability map, in reading order."""
    cv2 = _cv2()
    height, width = prob.shape
    page_h, page_w = page_shape
    bitmap = (prob > thresh).astype(np.uint8)
    if dilate:
        bitmap = cv2.dilate(bitmap, np.ones((2, 2), dtype=np.uint8))
    found = cv2.findContours(bitmap * 255, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    contours = found[0] if len(found) == 2 else found[1]
    boxes = []
    for contour in contours[:max_candidates]:
        box, short = _min_area_box(contour)
        if short < 3 or _mean_score(prob, box.reshape(-1, 2)) < box_thresh:
            continue
        grown, short = _min_area_box(_expand(box, unclip_ratio))
        if short < 5:
            continue
        grown[:, 0] = np.clip(np.round(grown[:, 0] / width * page_w), 0, page_w)
        grown[:, 1] = np.clip(np.round(grown[:, 1] / height * page_h), 0, page_h)
        boxes.append(grown.astype(np.int32))
    kept = []
    for box in boxes:
        box = _clockwise(box.astype(np.float32))
        box[:, 0] = np.minimum(np.maximum(box[:, 0], 0), page_w - 1).astype(np.int32)
        box[:, 1] = np.minimum(np.maximum(box[:, 1], 0), page_h - 1).astype(np.int32)
        if int(np.linalg.norm(box[0] - box[1])) > 3 and int(np.linalg.norm(box[0] - box[3])) > 3:
            kept.append(box)
    return _reading_order(kept)


def _clockwise(points: np.ndarray) -> np.ndarray:
    """Corners as top-left, top-right, bottom-right, bottom-left."""
    by_x = points[np.argsort(points[:, 0]), :]
    left, right = by_x[:2], by_x[2:]
    top_left, bottom_left = left[np.argsort(left[:, 1]), :]
    top_right, bottom_right = right[np.argsort(right[:, 1]), :]
    return np.array([top_left, top_right, bottom_right, bottom_left], dtype=np.float32)


def _reading_order(boxes: list[np.ndarray]) -> list[np.ndarray]:
    """Top to bottom; boxes whose tops lie within 10 pixels count as one line, left to right."""
    ordered = sorted(boxes, key=lambda b: (b[0][1], b[0][0]))
    for i in range(len(ordered) - 1):
        for j in range(i, -1, -1):
            if abs(ordered[j + 1][0][1] - ordered[j][0][1]) < 10 and ordered[j + 1][0][0] < ordered[j][0][0]:
                ordered[j], ordered[j + 1] = ordered[j + 1], ordered[j]
            else:
                break
    return ordered


def crop_upright(page: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The box's content warped to an upright rectangle (tall crops turned a quarter)."""
    cv2 = _cv2()
    width = int(max(np.linalg.norm(box[0] - box[1]), np.linalg.norm(box[2] - box[3])))
    height = int(max(np.linalg.norm(box[0] - box[3]), np.linalg.norm(box[1] - box[2])))
    target = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float32)
    matrix = cv2.getPerspectiveTransform(box.astype(np.float32), target)
    crop = cv2.warpPerspective(page, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE,
                               flags=cv2.INTER_CUBIC)
    if crop.shape[0] / crop.shape[1] >= 1.5:
        crop = np.rot90(crop)
    return np.ascontiguousarray(crop)


def _fit_height(crop: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize to ``height`` keeping the aspect (at most ``width`` wide), scale to [-1, 1], pad right with 0."""
    cv2 = _cv2()
    h, w = crop.shape[:2]
    aspect = w / float(h)  # NOTE: aspect first, then times height: the family's rounding, to the pixel
    resized_w = min(width, math.ceil(height * aspect))
    resized = cv2.resize(crop, (resized_w, height)).astype(np.float32)
    resized = (resized.transpose(2, 0, 1) / 255 - 0.5) / 0.5
    out = np.zeros((3, height, width), dtype=np.float32)
    out[:, :, :resized_w] = resized
    return out


def _recogniser_ratios(crops: list[np.ndarray], *, batch: int, base_ratio: float) -> list[float]:
    """The width-to-height ratio the family's recogniser pads each crop to: crops sorted by ratio and
    taken ``batch`` at a time, each padded to its group's widest (at least ``base_ratio``). Kept so
    that edgecoe, which batches differently, feeds the recogniser exactly what the family does."""
    ratios = [c.shape[1] / float(c.shape[0]) for c in crops]
    order = np.argsort(np.array(ratios))
    padded = [0.0] * len(crops)
    for start in range(0, len(crops), batch):
        group = order[start:start + batch]
        widest = max([base_ratio, *(ratios[i] for i in group)])
        for i in group:
            padded[i] = widest
    return padded


def ocr_boxes(call: TransformCall) -> list[dict[str, np.ndarray]]:
    """Prepare of the classifier: one item per text box, in reading order, each with the classifier's
    input ``x``, the upright ``crop``, its ``box`` on the original page and the recogniser's ``ratio``."""
    detector = str(_arg(call, "detector", "det"))
    prob = np.asarray(call.output(detector, str(_arg(call, "map_output", "sigmoid_0.tmp_0"))))
    page = call.prepared_value(detector, "page")
    geometry = call.prepared_value(detector, "geometry")
    if prob.ndim != 3 or prob.shape[0] != 1:
        raise TransformError(f"expects the detector's map as [1, H, W], got {list(prob.shape)}")
    boxes = detect_boxes(prob[0], page.shape[:2], thresh=float(_arg(call, "thresh", 0.3)),
                         box_thresh=float(_arg(call, "box_thresh", 0.5)),
                         unclip_ratio=float(_arg(call, "unclip_ratio", 1.6)))
    crops = [crop_upright(page, box) for box in boxes]
    rec_h, rec_w = int(_arg(call, "rec_height", 48)), int(_arg(call, "rec_width", 320))
    ratios = _recogniser_ratios(crops, batch=int(_arg(call, "rec_batch", 6)), base_ratio=rec_w / rec_h)
    cls_h, cls_w = int(_arg(call, "cls_height", 48)), int(_arg(call, "cls_width", 192))
    return [{"x": _fit_height(crop, cls_h, cls_w), "crop": crop, "box": _page_points(box, geometry),
             "ratio": np.asarray(ratio, dtype=np.float64)}
            for crop, box, ratio in zip(crops, boxes, ratios, strict=True)]


def _page_points(box: np.ndarray, geometry: np.ndarray) -> np.ndarray:
    """A box on the detector's page mapped back to the original page's pixels."""
    ratio_h, ratio_w, top, height, width = (float(v) for v in geometry)
    points = box.astype(np.float32).copy()
    points[:, 1] -= top
    points[:, 0] *= ratio_w
    points[:, 1] *= ratio_h
    points = np.maximum(points, 0)
    points[:, 0] = np.minimum(points[:, 0], width)
    points[:, 1] = np.minimum(points[:, 1], height)
    return points


def ocr_upright(call: TransformCall) -> dict[str, np.ndarray]:
    """Prepare of the recogniser: the crop turned 180 degrees where the classifier says so with
    confidence above ``cls_thresh``, as the recogniser's input ``x``."""
    cv2 = _cv2()
    classifier = str(_arg(call, "classifier", "cls"))
    probs = np.asarray(call.output(classifier, str(_arg(call, "cls_output", "save_infer_model/scale_0.tmp_1"))))
    crop = call.prepared_value(classifier, "crop")
    ratio = float(call.prepared_value(classifier, "ratio"))
    label = int(np.argmax(probs))
    if label == 1 and float(probs[label]) > float(_arg(call, "cls_thresh", 0.9)):
        crop = cv2.rotate(crop, cv2.ROTATE_180)
    height = int(_arg(call, "rec_height", 48))
    return {"x": _fit_height(crop, height, int(height * ratio))}


def ocr_text(call: TransformCall) -> dict[str, np.ndarray]:
    """Finish of the recogniser: ``text`` and its mean character ``score`` by greedy CTC decoding
    (repeats merged, blanks dropped) over the character list in the model's metadata."""
    probs = np.asarray(call.outputs[str(_arg(call, "output", "softmax_11.tmp_0"))])
    characters = _characters(call)
    best = probs.argmax(axis=1)
    keep = np.ones(len(best), dtype=bool)
    keep[1:] = best[1:] != best[:-1]
    keep &= best != 0  # index 0: the CTC blank
    scores = probs.max(axis=1)[keep]
    text = "".join(characters[i] for i in best[keep] if i < len(characters))
    box = call.prepared_value(str(_arg(call, "classifier", "cls")), "box")
    return {"text": np.asarray(text), "score": np.asarray(float(scores.mean()) if scores.size else 0.0), "box": box}


_CHARACTER_CACHE: dict[int, list[str]] = {}


def _characters(call: TransformCall) -> list[str]:
    """The recogniser's characters: blank first, the model's list, then a space."""
    metadata = call.model_metadata.get(call.expert, {})
    listed = metadata.get(str(_arg(call, "metadata_key", "character")))
    if listed is None:
        raise TransformError(f"expert {call.expert!r} has no character list in its model metadata "
                             f"(keys: {sorted(metadata)})")
    key = hash(listed)
    if key not in _CHARACTER_CACHE:
        _CHARACTER_CACHE.clear()  # one recogniser at a time is the usual case: keep the cache small
        _CHARACTER_CACHE[key] = ["", *listed.splitlines(), " "]
    return _CHARACTER_CACHE[key]


def read_page(result: Any, *, recogniser: str = "rec", min_score: float = 0.5) -> list[tuple[list[list[float]], str, float]]:
    """(box on the page, text, score) per line of a finished request, in reading order; lines
    scoring below ``min_score`` are left out, as the family's pipeline does."""
    out = []
    for outputs in result.items.get(recogniser, []):
        score = float(outputs["score"])
        if score >= min_score:
            out.append((np.asarray(outputs["box"]).tolist(), str(outputs["text"]), score))
    return out


TRANSFORMS = {"ocr_page": ocr_page, "ocr_boxes": ocr_boxes, "ocr_upright": ocr_upright, "ocr_text": ocr_text}
"""For ``edgecoe.load(..., transforms=TRANSFORMS)`` or ``--transforms edgecoe.apps.ocr``."""
