"""Shop the look: find the items in a photo and match each to products.

Without an object detector (none can be assumed installed), regions are proposed from the
encoder itself: connected areas where the backbone's last feature map is strongly active, plus
a multi-scale grid. All regions are embedded in one batch and matched in one SQL statement;
regions that overlap and agree on their best product merge into one group, a region whose
best match is weak is dropped. A shop with a real detector sets ``LOOK["DETECTOR"]`` to a
class with ``propose(image) -> list[Box]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np
from django.utils.module_loading import import_string
from PIL import Image

from visual_search.conf import vs_settings

Box = tuple[float, float, float, float]  # left, top, right, bottom in pixels


class Proposal(NamedTuple):
    box: Box
    # Shaped to an object (a detector's box, an active area), not a fixed window: when
    # regions merge, the group takes the box of its best precise member.
    precise: bool = False


class Detector(Protocol):
    def propose(self, image: Image.Image) -> list[Proposal]: ...


def iou(a: Box, b: Box) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


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
    """Class-agnostic proposals: the encoder's active areas plus a multi-scale grid."""

    def __init__(
        self,
        scales: Sequence[float] = (0.7, 0.5, 0.35),
        input_size: int = 640,
        levels: Sequence[float] = (-0.25, 0.25, 0.75, 1.25),
    ) -> None:
        self.scales = tuple(scales)
        self.input_size = input_size
        # Several thresholds: a low one keeps whole items with quiet parts, a high one splits
        # items that touch (benchmarks/look.py measured 0.93 of items covered at IoU 0.5).
        self.levels = tuple(levels)

    def propose(self, image: Image.Image) -> list[Proposal]:
        from visual_search.encoders import get_encoder

        width, height = image.size
        boxes = [(0.0, 0.0, float(width), float(height)), *grid_boxes(width, height, self.scales)]
        proposals = [Proposal(box) for box in boxes]
        energy = getattr(get_encoder(), "activation_map", None)
        if energy is not None:
            heat = energy(image, self.input_size)
            for level in self.levels:
                areas = component_boxes(heat, width, height, level=level)
                proposals += [Proposal(box, precise=True) for box in areas]
        return proposals


def get_detector() -> Detector:
    config = dict(vs_settings.LOOK)
    return import_string(config["DETECTOR"])(**config.get("DETECTOR_OPTIONS", {}))


@dataclass
class Region:
    box: Box
    matches: list[Any]  # Neighbour objects, best first
    precise: bool = False

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


def group_regions(
    regions: list[Region],
    *,
    k: int,
    min_score: float,
    relative: float,
    merge_iou: float,
    suppress_iou: float,
    min_support: int = 1,
) -> list[LookGroup]:
    """One group per item: object-shaped regions first (non-maximum suppression by score),
    then windows where no group is yet; weak regions dropped; boxes that hold two or more
    other items (the scene) dropped; each group's products pooled from the regions on it."""
    from visual_search.services import SearchResult

    usable = [r for r in regions if r.matches and r.best.score >= min_score]
    if not usable:
        return []
    floor = max(min_score, max(r.best.score for r in usable) * relative)
    kept: list[list[Region]] = []  # each group: its box region first, then supporting ones
    ordered = sorted(usable, key=lambda r: (not r.precise, -r.best.score))
    for region in ordered:
        home = None
        for members in kept:
            overlap = iou(region.box, members[0].box)
            if overlap >= suppress_iou or (
                overlap >= merge_iou and region.best.product.pk == members[0].best.product.pk
            ):
                home = members
                break
            if not region.precise and _centre_inside(region.box, members[0].box):
                home = [] if overlap < merge_iou else members  # a part of a found item
                break
        if home is None:
            if region.best.score >= floor:
                kept.append([region])
        elif home:
            home.append(region)
    # A box over two or more other items is the scene (or a gap between them), not an item.
    kept = [
        m
        for m in kept
        if sum(_contains(m[0].box, o[0].box, slack=0.5) for o in kept if o is not m) < 2
    ]
    # A box lying mostly inside another group's box is a part of that item.
    kept = [
        m
        for m in kept
        if not any(o is not m and _contains(o[0].box, m[0].box, slack=0.8) for o in kept)
    ]
    # Real items are seen by several regions (windows, activation levels); a region nobody
    # else backs is most often a gap, a part or a mix of two items.
    kept = [m for m in kept if len(m) >= min_support]
    found = []
    for members in sorted(kept, key=lambda m: -m[0].best.score):
        best: dict[Any, Any] = {}
        for region in members:
            for match in region.matches:
                if match.product.pk not in best or match.score > best[match.product.pk].score:
                    best[match.product.pk] = match
        ranked = sorted(best.values(), key=lambda m: m.score, reverse=True)[:k]
        found.append(
            LookGroup(
                box=tuple(round(v, 1) for v in members[0].box),
                score=members[0].best.score,
                results=[SearchResult(m.product, m.score, m.image_key) for m in ranked],
                regions=len(members),
            )
        )
    return found


def _centre_inside(box: Box, other: Box) -> bool:
    x, y = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return other[0] <= x <= other[2] and other[1] <= y <= other[3]


def _contains(outer: Box, inner: Box, slack: float = 0.9) -> bool:
    """Most of ``inner`` lies inside ``outer`` and it is much smaller (a part of the item)."""
    width = max(0.0, min(outer[2], inner[2]) - max(outer[0], inner[0]))
    height = max(0.0, min(outer[3], inner[3]) - max(outer[1], inner[1]))
    area = (inner[2] - inner[0]) * (inner[3] - inner[1])
    return area > 0 and width * height / area >= slack
