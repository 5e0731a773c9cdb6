"""The rank heatmap as a picture, for trackers that take images (TensorBoard, MLflow).

The dashboard draws this heatmap with plotly (``dashboard/figures.py``), but the
worker may not import the dashboard, and plotly's PNG export drives a browser
(kaleido + Chromium): too heavy for a training process. Pillow is small,
already required by ``torch.utils.tensorboard``'s images and by TensorBoard
itself, so the trackers extra brings it; matplotlib would add ~40 MB for one
grid of coloured cells. Same layout as the dashboard: one row per layer, one
column per module type, the live count in each cell, colour 0..r' (YlGnBu).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

# ColorBrewer YlGnBu, pale (no component left) to dark (all r' left), as on the dashboard.
YLGNBU = np.array(
    [
        (255, 255, 217),
        (237, 248, 177),
        (199, 233, 180),
        (127, 205, 187),
        (65, 182, 196),
        (29, 145, 192),
        (34, 94, 168),
        (37, 52, 148),
        (8, 29, 88),
    ],
    dtype=float,
)
EMPTY = (235, 235, 235)  # a (layer, type) pair the model does not adapt
CELL_H = 26
PAD = 8


def cell_color(value: float, vmax: float) -> tuple[int, int, int]:
    """The colour of a cell holding ``value`` on the scale 0..``vmax``."""
    x = 0.0 if vmax <= 0 else min(max(value / vmax, 0.0), 1.0) * (len(YLGNBU) - 1)
    i = min(int(x), len(YLGNBU) - 2)
    rgb = YLGNBU[i] + (YLGNBU[i + 1] - YLGNBU[i]) * (x - i)
    r, g, b = (round(float(c)) for c in rgb)
    return r, g, b


def render(matrix: dict[str, Any], r_max: int, title: str) -> np.ndarray:
    """A ``rank_matrix`` (contracts.rankgrid) as an RGB image, H x W x 3 uint8."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def width(text: str) -> int:
        left, _, right, _ = probe.textbbox((0, 0), text, font=font)
        return int(right - left)

    types, layers = matrix["types"], matrix["layers"]
    row_labels = [f"layer {layer}" for layer in layers]
    label_w = max((width(t) for t in row_labels), default=0) + 2 * PAD
    col_w = max([48, *(width(t) + PAD for t in types)])
    top = 2 * CELL_H + PAD
    size = (
        max(label_w + col_w * len(types) + PAD, width(title) + 2 * PAD),
        top + CELL_H * len(layers) + PAD,
    )
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.text((PAD, PAD // 2), title, fill=(17, 24, 39), font=font)
    for j, name in enumerate(types):
        draw.text((label_w + j * col_w + 2, CELL_H + PAD // 2), name, fill=(55, 65, 81), font=font)
    for i, label in enumerate(row_labels):
        y = top + i * CELL_H
        draw.text((PAD, y + 7), label, fill=(55, 65, 81), font=font)
        for j in range(len(types)):
            x = label_w + j * col_w
            live = matrix["live"][i][j]
            box = (x + 1, y + 1, x + col_w - 2, y + CELL_H - 2)
            if live is None:
                draw.rectangle(box, fill=EMPTY)
                continue
            color = cell_color(live, r_max)
            draw.rectangle(box, fill=color)
            ink = (255, 255, 255) if sum(color) < 380 else (17, 24, 39)
            text = str(live)
            draw.text((x + (col_w - width(text)) // 2, y + 7), text, fill=ink, font=font)
    return np.asarray(image, dtype=np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    """An RGB image as PNG bytes."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(out, format="PNG")
    return out.getvalue()
