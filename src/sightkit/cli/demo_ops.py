"""``sightkit demo``: the box ops on a real photograph (scikit-image's astronaut).

Draws a reference box around the astronaut's face and candidate boxes around it, labelled
with their IoU, GIoU, DIoU and CIoU to the reference, and writes ``OUT/ops.png``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from sightkit.ops.boxes import box_iou, complete_box_iou, distance_box_iou, generalized_box_iou

# The astronaut's face in skimage.data.astronaut() (512x512), xyxy pixels.
FACE = (165.0, 25.0, 265.0, 135.0)


def _load_photo():
    try:
        from skimage import data
    except ImportError as error:
        raise SystemExit("the demo photo comes from scikit-image: pip install 'sightkit[dev]'") from error
    return data.astronaut()


def _candidates(generator: torch.Generator) -> torch.Tensor:
    """Boxes around the face: shifted, scaled, stretched and one far away, xyxy."""
    x1, y1, x2, y2 = FACE
    w, h = x2 - x1, y2 - y1
    return torch.tensor(
        [
            [x1 + 0.15 * w, y1 + 0.1 * h, x2 + 0.15 * w, y2 + 0.1 * h],  # shifted
            [x1 - 0.3 * w, y1 - 0.3 * h, x2 + 0.3 * w, y2 + 0.3 * h],  # too large
            [x1 + 0.3 * w, y1 - 0.2 * h, x2 - 0.3 * w, y2 + 0.2 * h],  # too thin
            [x1 + 0.5 * w, y1 + 0.5 * h, x2 + 0.9 * w, y2 + 0.9 * h],  # barely overlapping
            [360.0, 300.0, 470.0, 410.0],  # far away
        ]
    ) + torch.randn(5, 4, generator=generator)


def run_ops_demo(out: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    photo = _load_photo()
    reference = torch.tensor([FACE])
    candidates = _candidates(torch.Generator().manual_seed(0))
    scores = {
        "IoU": box_iou(candidates, reference)[:, 0],
        "GIoU": generalized_box_iou(candidates, reference)[:, 0],
        "DIoU": distance_box_iou(candidates, reference)[:, 0],
        "CIoU": complete_box_iou(candidates, reference)[:, 0],
    }

    table = Table(title="candidates vs the reference box (face)")
    table.add_column("box")
    for name in scores:
        table.add_column(name, justify="right")
    for i in range(len(candidates)):
        table.add_row(f"#{i}", *(f"{s[i]:+.3f}" for s in scores.values()))
    Console().print(table)

    fig, ax = plt.subplots(figsize=(7, 7))
    ax.imshow(photo)
    colors = plt.cm.tab10.colors
    x1, y1, x2, y2 = FACE
    ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=3, color="white"))
    for i, (bx1, by1, bx2, by2) in enumerate(candidates.tolist()):
        ax.add_patch(plt.Rectangle((bx1, by1), bx2 - bx1, by2 - by1, fill=False, lw=2, color=colors[i]))
        label = f"#{i} " + " ".join(f"{k} {v[i]:+.2f}" for k, v in scores.items())
        ax.text(bx1, by2 + 12, label, color="black", fontsize=7, bbox={"facecolor": colors[i], "alpha": 0.8, "pad": 1})
    ax.set_title("IoU family: each candidate against the white reference box")
    ax.axis("off")
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    fig.savefig(path / "ops.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    Console().print(f"wrote [bold]{path / 'ops.png'}[/bold]")
    return path / "ops.png"
