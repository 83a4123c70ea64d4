"""The discriminator as a real-vs-fake classifier on test images and as many generated ones: accuracy and
confusion matrix (0.5 accuracy = it cannot tell them apart), and the picture confusion_matrix.png."""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .. import pictures, sampling
from . import REGISTRY, EvalContext, Metric, Scores

D_BATCH = 64  # images per batch: BatchNorm statistics over batches of one kind, as in training


def classifier_report(real_logits, fake_logits) -> dict:
    """Threshold the logits at 0 (p = 0.5); positive class = real.

    confusion = [[TN, FP], [FN, TP]]: rows are the true class (fake, real), columns the prediction
    (fake, real).
    """
    real = np.asarray(real_logits, np.float64).ravel()
    fake = np.asarray(fake_logits, np.float64).ravel()
    tp, fn = int((real > 0).sum()), int((real <= 0).sum())
    fp, tn = int((fake > 0).sum()), int((fake <= 0).sum())
    total = tp + fn + fp + tn
    return {
        "accuracy": (tp + tn) / total if total else float("nan"),
        "confusion": np.array([[tn, fp], [fn, tp]], dtype=np.int64),
        "real_accuracy": tp / (tp + fn) if tp + fn else float("nan"),
        "fake_accuracy": tn / (tn + fp) if tn + fp else float("nan"),
    }


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: bitmap font only
        return ImageFont.load_default()


def confusion_png(confusion: np.ndarray, accuracy: float) -> Image.Image:
    """A 2x2 table: rows = true class, columns = D's verdict; green = right, red = wrong, shade = row share."""
    cell, left, top, pad = 170, 150, 110, 40
    w, h = left + 2 * cell + pad, top + 2 * cell + 60
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    big, mid, small = _font(30), _font(18), _font(15)
    title = f"Discriminator: real vs generated, accuracy {accuracy:.1%}" if math.isfinite(accuracy) \
        else "Discriminator: real vs generated"
    d.text((w / 2, 22), title, fill="#222", font=mid, anchor="mm")
    d.text((left + cell, top - 50), "D says", fill="#555", font=small, anchor="mm")
    names = ("fake", "real")
    for j, name in enumerate(names):
        d.text((left + j * cell + cell / 2, top - 22), name, fill="#222", font=mid, anchor="mm")
    for i, name in enumerate(names):
        y = top + i * cell + cell / 2
        d.text((left - 20, y), f"{name} image", fill="#222", font=mid, anchor="rm")
        row = confusion[i].sum()
        for j in range(2):
            count = int(confusion[i, j])
            share = count / row if row else 0.0
            base = (46, 160, 67) if i == j else (214, 69, 65)
            colour = tuple(round(255 - share * (255 - c)) for c in base)
            x0, y0 = left + j * cell, top + i * cell
            d.rectangle([x0, y0, x0 + cell - 4, y0 + cell - 4], fill=colour)
            ink = "white" if share > 0.55 else "#222"
            d.text((x0 + cell / 2 - 2, y0 + cell / 2 - 16), f"{count}", fill=ink, font=big, anchor="mm")
            d.text((x0 + cell / 2 - 2, y0 + cell / 2 + 20), f"{share:.0%} of {name}", fill=ink, font=small, anchor="mm")
    d.text((w / 2, h - 22), "rows: true class, columns: D's verdict (logit > 0 = real)", fill="#777",
           font=small, anchor="mm")
    return img


def logits(discriminator, images: np.ndarray, device, batch: int = D_BATCH) -> np.ndarray:
    """D's logits of uint8 images as in training (sampling.d_logits), `batch` at a time."""
    parts = np.array_split(np.arange(len(images)), max(1, -(-len(images) // batch)))  # no batch of one
    batches = (pictures.to_float(images[idx]).to(device) for idx in parts)
    return np.concatenate([out.cpu().numpy() for out in sampling.d_logits(discriminator, batches)])


@REGISTRY.register("discriminator")
class DiscriminatorMetric(Metric):
    help = {
        "d_accuracy": "discriminator accuracy on test vs generated images; 50% = cannot tell them apart",
        "d_accuracy_real": "share of the test images that D calls real",
        "d_accuracy_fake": "share of the generated images that D calls generated",
        "d_tn": "generated images that D calls generated",
        "d_fp": "generated images that D calls real",
        "d_fn": "test images that D calls generated",
        "d_tp": "test images that D calls real",
    }
    headline = ("d_accuracy",)
    lower_is_better = None  # 50% is best: D cannot tell generated from real images
    order = 30

    def evaluate(self, ctx: EvalContext) -> Scores:
        # the test images (all, unless fewer are generated) and as many generated
        m = min(len(ctx.test), len(ctx.fake))
        clf = classifier_report(logits(ctx.discriminator, ctx.test_subset(m), ctx.device),
                                logits(ctx.discriminator, ctx.fake[:m], ctx.device))
        pictures.save_png(confusion_png(clf["confusion"], clf["accuracy"]), ctx.out_dir / "confusion_matrix.png")
        (tn, fp), (fn, tp) = clf["confusion"].tolist()
        return dict(d_accuracy=clf["accuracy"], d_accuracy_real=clf["real_accuracy"],
                    d_accuracy_fake=clf["fake_accuracy"], d_tn=tn, d_fp=fp, d_fn=fn, d_tp=tp)
