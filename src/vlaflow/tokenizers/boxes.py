"""Boxes in PaliGemma's text format: ``<locY0><locX0><locY1><locX1> label``, several joined by " ; ",
each value ``floor(coordinate / side * 1024)`` clipped to 0..1023 (y_min, x_min, y_max, x_max).

Shared by the tabletop annotations that write them and by anything that reads a model's answer.
"""

from __future__ import annotations

import re

import numpy as np

_LOC_RE = re.compile(r"<loc(\d{4})><loc(\d{4})><loc(\d{4})><loc(\d{4})>\s*([^;<]*)")


def parse_boxes(text: str) -> list[tuple[tuple[int, int, int, int], str]]:
    """[((y0, x0, y1, x1) loc indices, label)] of a `<loc>` box string."""
    return [((int(a), int(b), int(c), int(d)), label.strip()) for a, b, c, d, label in _LOC_RE.findall(text)]


def draw_boxes(image: np.ndarray, text: str, colour: tuple[int, int, int] = (255, 255, 0)) -> np.ndarray:
    """A copy of `image` with the boxes of a `<loc>` string drawn and labelled (for docs and videos)."""
    from PIL import Image, ImageDraw

    h, w = image.shape[:2]
    pil = Image.fromarray(image)
    draw = ImageDraw.Draw(pil)
    for (y0, x0, y1, x1), label in parse_boxes(text):
        rect = (x0 / 1024 * w, y0 / 1024 * h, (x1 + 1) / 1024 * w - 1, (y1 + 1) / 1024 * h - 1)
        draw.rectangle(rect, outline=colour, width=max(1, w // 224))
        draw.text((rect[0] + 2, max(0, rect[1] - 11)), label, fill=colour)
    return np.asarray(pil)
