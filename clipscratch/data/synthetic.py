"""A procedural captioned image set: coloured shapes of several counts, sizes and positions.

Every image holds 1-3 identical shapes of one colour, placed in one half of the
image (left, right, top or bottom). Captions come from varied templates. Some
colour-shape combinations are held out of training, so zero-shot accuracy on the
held-out images measures composition, not memory. Object boxes are kept for the
Grad-CAM pointing game.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Dict, Iterator, List, Tuple

from PIL import Image, ImageDraw

COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (215, 35, 35), "green": (35, 160, 55), "blue": (40, 70, 215),
    "yellow": (230, 205, 30), "purple": (135, 50, 175), "orange": (240, 130, 25),
}
SHAPES = ["circle", "square", "triangle", "diamond"]
COUNTS = {1: "one", 2: "two", 3: "three"}
POSITIONS = ["left", "right", "top", "bottom"]
SIZES = {"small": (5, 7), "large": (9, 11)}  # radius range in pixels at 64x64
HELD_OUT = {("red", "triangle"), ("green", "circle"), ("blue", "diamond"), ("yellow", "square"),
            ("purple", "circle"), ("orange", "triangle")}

TEMPLATES = [
    "a photo of {count} {size} {colour} {shapes} on the {position}",
    "{count} {colour} {shapes} on the {position} side",
    "there {be} {count} {shapes} in {colour} at the {position}",
    "{count} {size} {colour} {shapes}, {position}",
    "an image with {count} {colour} {shapes} placed on the {position}",
    "{colour} {shapes} on the {position}, {count} of them",
    "a drawing of {count} {size} {shapes} coloured {colour} on the {position}",
]

# Zero-shot tasks: class names and prompt templates for each attribute.
TASKS: Dict[str, Tuple[List[str], List[str]]] = {
    "colour": (list(COLOURS), ["a photo of {} shapes", "{} objects", "something coloured {}"]),
    "shape": (SHAPES, ["a photo of {}s", "a drawing of a {}", "{} shapes"]),
    "count": (list(COUNTS.values()), ["a photo of {} shapes", "{} objects", "there are {} things"]),
    "position": (POSITIONS, ["shapes on the {}", "objects on the {} side", "a photo of things at the {}"]),
}


@dataclass
class ShapeSample:
    image: Image.Image
    caption: str
    colour: str
    shape: str
    count: int
    size: str
    position: str
    boxes: List[Tuple[int, int, int, int]]

    def labels(self) -> Dict[str, int]:
        return {
            "colour": list(COLOURS).index(self.colour), "shape": SHAPES.index(self.shape),
            "count": self.count - 1, "position": POSITIONS.index(self.position),
        }

    def meta(self) -> dict:
        return {"colour": self.colour, "shape": self.shape, "count": self.count, "size": self.size,
                "position": self.position, "boxes": self.boxes, "labels": self.labels()}


def _region(position: str, size: int) -> Tuple[int, int, int, int]:
    half = size // 2
    return {"left": (0, 0, half, size), "right": (half, 0, size, size),
            "top": (0, 0, size, half), "bottom": (0, half, size, size)}[position]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        s = r * 0.9
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r * math.sin(math.pi / 3) * 1.1, cy + r * 0.7),
                      (cx + r * math.sin(math.pi / 3) * 1.1, cy + r * 0.7)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r * 1.1), (cx + r * 0.8, cy), (cx, cy + r * 1.1), (cx - r * 0.8, cy)], fill=fill)


def _place(rng: random.Random, region, count: int, radius: int) -> List[Tuple[int, int, int]]:
    x0, y0, x1, y1 = region
    for _ in range(200):
        placed = []
        for _ in range(count):
            cx, cy = rng.randint(x0 + radius + 1, x1 - radius - 2), rng.randint(y0 + radius + 1, y1 - radius - 2)
            if all((cx - px) ** 2 + (cy - py) ** 2 > (2 * radius + 2) ** 2 for px, py, _ in placed):
                placed.append((cx, cy, radius))
        if len(placed) == count:
            return placed
    return placed


def caption_for(rng: random.Random, colour: str, shape: str, count: int, size: str, position: str) -> str:
    template = rng.choice(TEMPLATES)
    shapes = shape + ("s" if count > 1 else "")
    return template.format(count=COUNTS[count], size=size, colour=colour, shapes=shapes, position=position,
                           be="are" if count > 1 else "is")


def make_sample(rng: random.Random, held_out: bool, image_size: int = 64) -> ShapeSample:
    while True:
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        if ((colour, shape) in HELD_OUT) == held_out:
            break
    count, size, position = rng.choice(list(COUNTS)), rng.choice(list(SIZES)), rng.choice(POSITIONS)
    scale = image_size / 64
    radius = int(rng.randint(*SIZES[size]) * scale)
    grey = rng.randint(60, 200)
    image = Image.new("RGB", (image_size, image_size), (grey, grey, grey))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(0, 6)):  # faint clutter lines
        shade = grey + rng.randint(-25, 25)
        draw.line([rng.randint(0, image_size) for _ in range(4)], fill=(shade, shade, shade), width=1)
    base = COLOURS[colour]
    fill = tuple(max(0, min(255, c + rng.randint(-20, 20))) for c in base)
    boxes = []
    placed = _place(rng, _region(position, image_size), count, radius)
    for cx, cy, r in placed:
        _draw_shape(draw, shape, cx, cy, r, fill)
        boxes.append((cx - r - 1, cy - r - 1, cx + r + 1, cy + r + 1))
    return ShapeSample(image, caption_for(rng, colour, shape, len(placed), size, position), colour, shape,
                       len(placed), size, position, boxes)


def generate(n: int, seed: int, held_out: bool, image_size: int = 64) -> Iterator[ShapeSample]:
    rng = random.Random(seed)
    for _ in range(n):
        yield make_sample(rng, held_out, image_size)
