"""Shop the look: find the items in a photo and match each to products.

Without an object detector (none can be assumed installed), regions are proposed from the
encoder itself: connected areas where the backbone's last feature map is strongly active, plus
the whole photo and a grid of windows. All regions are embedded in one batch and matched in one
SQL statement. Each region is then scored as an item by a small logistic model of how it
matched, how many overlapping regions agree with it and how much it stands out of the
activation map; the set of non-overlapping regions with the best total score are the items,
each with the products of the regions on it and a box fitted by those that match it. A shop
with a real detector sets ``LOOK["DETECTOR"]`` to a class with ``propose(image) ->
list[Proposal]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np
from django.utils.module_loading import import_string
from PIL import Image

from visual_search import logistic
from visual_search.conf import vs_settings

Box = tuple[float, float, float, float]  # left, top, right, bottom in pixels


def rounded_box(values: Iterable[float], scale: float = 1.0) -> Box:
    """A box in pixels to a tenth, ``scale`` times the given one."""
    left, top, right, bottom = (round(float(v) * scale, 1) for v in values)
    return left, top, right, bottom


class Proposal(NamedTuple):
    box: Box
    # Shaped to an object (a detector's box, an active area), not a fixed window.
    precise: bool = False
    # How much more active the encoder's feature map is inside the box than around it, and
    # than the whole photo (in standard deviations of the map): items stand out. Filled in
    # by ``with_contrast`` when a detector leaves it out.
    contrast: tuple[float, float] | None = None


class Detector(Protocol):
    def propose(self, image: Image.Image) -> list[Proposal]: ...


# The features of a region that say whether it is an item, in the order of the model's coef.
REGION_FEATURES = (
    "score",  # cosine of its best product
    "score_vs_best",  # ... over the photo's best region's
    "agreeing",  # log(1 + overlapping regions (IoU >= 0.5) with the same best product)
    "backed",  # share of the overlapping regions with its best product in their top k
    "margin",  # its best product's score over the second's
    "precise",  # 1 for a shaped box (activation area, detector), 0 for a grid window
    "size",  # sqrt of its share of the photo's area
    "contrast_around",
    "contrast_photo",
)
# Fitted by ``benchmarks/look.py --fit --items 2-6 --photos 150 --seed 100`` on composites of
# validation photos, an item being a region with IoU >= 0.5 against a pasted photo (docs/
# benchmarks.md); LOOK["OBJECTNESS"] overrides it.
OBJECTNESS: dict[str, Any] = {
    "coef": [7.3165, 5.8868, 0.2746, 0.6984, 0.1923, 0.0775, -5.2041, 3.76, -2.148],
    "intercept": -11.1768,
}
AGREE_IOU = 0.5  # regions this close are on the same item: they back it and pool products
PART_OF = 0.6  # a box with this share of its area inside another is a part of it
# An item's box is averaged over the regions this close to its chosen one that hold its product,
# each weighted by its objectness x exp(BOX_SHARPNESS x how much worse it matches the product
# than the chosen region): no single region's box fits an item as well as the best few together.
BOX_PEERS_IOU = 0.3
BOX_SHARPNESS = 40.0


def iou(a: Box, b: Box) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def pairwise_overlap(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(IoU[i, j], share of box j's area inside box i) for boxes (n x 4)."""
    left = np.maximum(boxes[:, None, 0], boxes[None, :, 0])
    top = np.maximum(boxes[:, None, 1], boxes[None, :, 1])
    right = np.minimum(boxes[:, None, 2], boxes[None, :, 2])
    bottom = np.minimum(boxes[:, None, 3], boxes[None, :, 3])
    inter = np.clip(right - left, 0, None) * np.clip(bottom - top, 0, None)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area[:, None] + area[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        overlap = np.where(union > 0, inter / union, 0.0)
        inside = np.where(area[None, :] > 0, inter / area[None, :], 0.0)
    return overlap, inside


def activation_contrast(
    heat: np.ndarray, boxes: Sequence[Box], width: int, height: int
) -> list[tuple[float, float]]:
    """Per box, (mean activation inside - in a ring around it, inside - the whole map), in
    standard deviations of the map; box sums from a summed-area table of the map upsampled."""
    up = np.kron(heat.astype(np.float64), np.ones((8, 8)))
    rows, cols = up.shape
    table = np.zeros((rows + 1, cols + 1))
    table[1:, 1:] = up.cumsum(0).cumsum(1)
    spread = float(up.std()) or 1.0
    mean = float(up.mean())

    def total(x0: int, y0: int, x1: int, y1: int) -> tuple[float, int]:
        return table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0], (x1 - x0) * (y1 - y0)

    values = []
    for box in boxes:
        x0 = int(np.clip(round(box[0] / width * cols), 0, cols - 1))
        y0 = int(np.clip(round(box[1] / height * rows), 0, rows - 1))
        x1 = int(np.clip(round(box[2] / width * cols), x0 + 1, cols))
        y1 = int(np.clip(round(box[3] / height * rows), y0 + 1, rows))
        dx = max(1, round(0.2 * (x1 - x0)), round(0.01 * cols))
        dy = max(1, round(0.2 * (y1 - y0)), round(0.01 * rows))
        inner, inner_area = total(x0, y0, x1, y1)
        outer, outer_area = total(
            max(0, x0 - dx), max(0, y0 - dy), min(cols, x1 + dx), min(rows, y1 + dy)
        )
        inside = inner / inner_area
        ring = (outer - inner) / (outer_area - inner_area) if outer_area > inner_area else inside
        values.append(((inside - ring) / spread, (inside - mean) / spread))
    return values


def grid_boxes(width: int, height: int, scales: Sequence[float]) -> list[Box]:
    """Square-ish windows at several scales of the short side, half-overlapping."""
    boxes: list[Box] = []
    short = min(width, height)
    for scale in scales:
        size = scale * short
        xs = _positions(width, size)
        ys = _positions(height, size)
        for x in xs:
            for y in ys:
                boxes.append(
                    (float(x), float(y), float(min(width, x + size)), float(min(height, y + size)))
                )
    return boxes


def _positions(length: float, size: float) -> np.ndarray:
    """Window starts at about half-window steps, the last one flush with the far edge."""
    if length <= size:
        return np.zeros(1)
    count = int(np.ceil((length - size) / (size / 2))) + 1
    return np.linspace(0, length - size, count)


def component_boxes(
    energy: np.ndarray, width: int, height: int, *, level: float = 0.5, pad: float = 0.1
) -> list[Box]:
    """Bounding boxes of the connected areas where ``energy`` (h x w) is above its mean +
    ``level`` standard deviations."""
    mask = energy > energy.mean() + level * energy.std()
    seen = np.zeros_like(mask)
    rows, cols = mask.shape
    boxes: list[Box] = []
    for r0 in range(rows):
        for c0 in range(cols):
            if not mask[r0, c0] or seen[r0, c0]:
                continue
            stack, cells = [(r0, c0)], []
            seen[r0, c0] = True
            while stack:
                r, c = stack.pop()
                cells.append((r, c))
                for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                    nr, nc = r + dr, c + dc
                    if 0 <= nr < rows and 0 <= nc < cols and mask[nr, nc] and not seen[nr, nc]:
                        seen[nr, nc] = True
                        stack.append((nr, nc))
            if len(cells) < 2:
                continue
            rs, cs = [c[0] for c in cells], [c[1] for c in cells]
            top, bottom = min(rs) / rows, (max(rs) + 1) / rows
            left, right = min(cs) / cols, (max(cs) + 1) / cols
            dx, dy = (right - left) * pad, (bottom - top) * pad
            boxes.append(
                (
                    max(0.0, left - dx) * width,
                    max(0.0, top - dy) * height,
                    min(1.0, right + dx) * width,
                    min(1.0, bottom + dy) * height,
                )
            )
    return boxes


class ActivationGridDetector:
    """Class-agnostic proposals: the encoder's active areas plus the whole photo and a grid
    of windows at ``scales`` of its short side."""

    def __init__(
        self,
        scales: Sequence[float] = (0.35,),
        input_size: int = 640,
        levels: Sequence[float] = (-0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5),
    ) -> None:
        # Windows at 0.5 and 0.7 as well (13 more regions to embed, a fifth of the time) found
        # 2 more of 1,443 items in composites: the active areas and the whole photo already
        # cover large items (benchmarks/look.py, docs/benchmarks.md).
        self.scales = tuple(scales)
        self.input_size = input_size
        # Several thresholds: a low one keeps whole items with quiet parts, a high one splits
        # items that touch; nine levels give the grouping more shapes to choose from than
        # four did (recall@4 +0.02 on two sets of composites, benchmarks/look.py).
        self.levels = tuple(levels)

    def propose(self, image: Image.Image) -> list[Proposal]:
        width, height = image.size
        boxes = [(0.0, 0.0, float(width), float(height)), *grid_boxes(width, height, self.scales)]
        proposals = [Proposal(box) for box in boxes]
        heat = activation_map(image, self.input_size)
        if heat is None:
            return proposals
        areas = {
            box
            for level in self.levels
            for box in component_boxes(heat, width, height, level=level)
        }
        proposals += [Proposal(box, precise=True) for box in sorted(areas)]
        contrast = activation_contrast(heat, [p.box for p in proposals], width, height)
        return [p._replace(contrast=c) for p, c in zip(proposals, contrast, strict=True)]


def activation_map(image: Image.Image, size: int = 640) -> np.ndarray | None:
    from visual_search.encoders import get_encoder

    energy = getattr(get_encoder(), "activation_map", None)
    return None if energy is None else energy(image, size)


def with_contrast(proposals: list[Proposal], image: Image.Image) -> list[Proposal]:
    """A detector's proposals with their activation contrast (zero when the encoder has no
    activation map)."""
    if all(p.contrast is not None for p in proposals):
        return proposals
    heat = activation_map(image)
    if heat is None:
        return [p._replace(contrast=p.contrast or (0.0, 0.0)) for p in proposals]
    contrast = activation_contrast(heat, [p.box for p in proposals], *image.size)
    return [
        p if p.contrast is not None else p._replace(contrast=c)
        for p, c in zip(proposals, contrast, strict=True)
    ]


def get_detector() -> Detector:
    config = dict(vs_settings.LOOK)
    return import_string(config["DETECTOR"])(**config.get("DETECTOR_OPTIONS", {}))


@dataclass
class Region:
    box: Box
    matches: list[Any]  # Neighbour objects, best first
    precise: bool = False
    contrast: tuple[float, float] = (0.0, 0.0)

    @property
    def best(self) -> Any:
        return self.matches[0]


@dataclass
class LookGroup:
    """An item found in the photo: where it is, and the products it may be."""

    box: Box
    score: float
    results: list[Any] = field(default_factory=list)  # SearchResult objects, best first
    regions: int = 1
    objectness: float = 0.0  # the model's probability that the box is an item


def region_features(regions: list[Region], size: tuple[int, int], k: int) -> np.ndarray:
    """One row of REGION_FEATURES per region (all with matches)."""
    boxes = np.array([r.box for r in regions], dtype=np.float64)
    overlap, _ = pairwise_overlap(boxes)
    np.fill_diagonal(overlap, 0.0)
    near = overlap >= AGREE_IOU
    best = np.array([r.best.product.pk for r in regions], dtype=object)
    same = best[:, None] == best[None, :]
    top_k = [{m.product.pk for m in other.matches[:k]} for other in regions]
    # holds[i, j]: region j has region i's best product in its top k
    holds = np.array([[b in products for products in top_k] for b in best])
    scores = np.array([r.best.score for r in regions])
    second = np.array([r.matches[1].score if len(r.matches) > 1 else 0.0 for r in regions])
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / (size[0] * size[1])
    return np.column_stack(
        [
            scores,
            scores / max(float(scores.max()), 1e-6),
            np.log1p((near & same).sum(1)),
            (near & holds).sum(1) / np.maximum(1, near.sum(1)),
            scores - second,
            [float(r.precise) for r in regions],
            np.sqrt(np.clip(area, 0, 1)),
            [r.contrast[0] for r in regions],
            [r.contrast[1] for r in regions],
        ]
    )


def item_scores(
    regions: list[Region],
    *,
    size: tuple[int, int],
    k: int,
    min_score: float,
    model: dict[str, Any] | None = None,
) -> tuple[list[Region], np.ndarray]:
    """The regions worth considering (best match at least ``min_score``) and the objectness
    model's probability that each is an item."""
    usable = [r for r in regions if r.matches and r.best.score >= min_score]
    if not usable:
        return [], np.zeros(0)
    return usable, logistic.probability(model or OBJECTNESS, region_features(usable, size, k))


def group_regions(
    regions: list[Region],
    *,
    size: tuple[int, int],
    k: int,
    min_score: float,
    min_objectness: float,
    overlap_iou: float,
    model: dict[str, Any] | None = None,
) -> list[LookGroup]:
    """The items: regions scored by the objectness model, then the set of compatible regions
    (no two overlapping beyond ``overlap_iou``, none mostly inside another) with the highest
    total score over ``min_objectness``; each item's products pooled from the regions on it,
    its box fitted by the regions around it that match its product (``item_box``).
    """
    from visual_search.services import SearchResult

    usable, objectness = item_scores(regions, size=size, k=k, min_score=min_score, model=model)
    if not usable:
        return []
    boxes = np.array([r.box for r in usable], dtype=np.float64)
    overlap, inside = pairwise_overlap(boxes)
    conflict = (overlap >= overlap_iou) | (inside >= PART_OF) | (inside.T >= PART_OF)
    candidates = [int(i) for i in np.argsort(-objectness) if objectness[i] > min_objectness]
    chosen = heaviest_compatible_set(candidates, objectness - min_objectness, conflict)
    groups = []
    for i in sorted(chosen, key=lambda i: -objectness[i]):
        members = [usable[j] for j in np.flatnonzero(overlap[i] >= AGREE_IOU)]
        best: dict[Any, Any] = {}
        for region in members:
            for match in region.matches:
                if match.product.pk not in best or match.score > best[match.product.pk].score:
                    best[match.product.pk] = match
        ranked = sorted(best.values(), key=lambda m: m.score, reverse=True)[:k]
        groups.append(
            LookGroup(
                box=rounded_box(item_box(i, usable, overlap, objectness)),
                score=usable[i].best.score,
                results=[SearchResult(m.product, m.score, m.image_key) for m in ranked],
                regions=len(members),
                objectness=round(float(objectness[i]), 4),
            )
        )
    return groups


def item_box(
    chosen: int, regions: list[Region], overlap: np.ndarray, objectness: np.ndarray
) -> np.ndarray:
    """The chosen region's box averaged with those of the regions around it (IoU >=
    BOX_PEERS_IOU) that have its best product among their matches, weighted by objectness and
    by how well each matches that product."""
    product = regions[chosen].best.product.pk
    peers, scores = [chosen], [regions[chosen].best.score]
    for j in np.flatnonzero(overlap[chosen] >= BOX_PEERS_IOU):
        score = next((m.score for m in regions[j].matches if m.product.pk == product), None)
        if j != chosen and score is not None:
            peers.append(int(j))
            scores.append(score)
    # A region matching the product better than the chosen one counts as much as it does, not
    # more: a tight box on the product's most telling part would otherwise take the item over.
    shortfall = np.minimum(0.0, np.array(scores, dtype=np.float64) - scores[0])
    weight = objectness[peers] * np.exp(BOX_SHARPNESS * shortfall)
    boxes = np.array([regions[j].box for j in peers], dtype=np.float64)
    return (boxes * weight[:, None]).sum(0) / weight.sum()


def heaviest_compatible_set(
    order: list[int], weight: np.ndarray, conflict: np.ndarray
) -> list[int]:
    """Greedy by weight, then while it pays, one chosen region traded for two compatible ones:
    a box over two items (or between them) loses to the two items' own boxes."""
    chosen: list[int] = []
    for i in order:
        if not conflict[i, chosen].any():
            chosen.append(i)
    improved = True
    while improved:
        improved = False
        for b in chosen:
            rest = [j for j in chosen if j != b]
            free = [
                i
                for i in order
                if i not in chosen and conflict[i, b] and not conflict[i, rest].any()
            ]
            gain, pair = 1e-9, None
            for x_index, x in enumerate(free):
                for y in free[x_index + 1 :]:
                    if not conflict[x, y] and weight[x] + weight[y] - weight[b] > gain:
                        gain, pair = weight[x] + weight[y] - weight[b], (x, y)
            if pair:
                chosen = [*rest, *pair]
                improved = True
                break
    return chosen
