"""dcgan.metrics.discriminator: the discriminator as a real-vs-fake classifier, and its picture."""
from __future__ import annotations

import numpy as np
import pytest

from dcgan.metrics.discriminator import classifier_report, confusion_png


def test_classifier_report():
    real = [2.0, 0.5, -1.0, 3.0]          # 3 called real (TP), 1 called fake (FN)
    fake = [-2.0, -0.1, 0.7, -5.0, 0.0]   # 0.7 called real (FP); the rest fake (TN), logit 0 included
    r = classifier_report(real, fake)
    np.testing.assert_array_equal(r["confusion"], [[4, 1], [1, 3]])  # [[TN, FP], [FN, TP]]
    assert r["accuracy"] == pytest.approx(7 / 9)
    assert r["real_accuracy"] == pytest.approx(3 / 4) and r["fake_accuracy"] == pytest.approx(4 / 5)


def test_confusion_png():
    img = confusion_png(np.array([[40, 10], [5, 45]]), 0.85)
    assert img.mode == "RGB" and img.size[0] > 300
    px = np.asarray(img)
    assert (px.reshape(-1, 3).std(0) > 10).all()  # coloured, not blank
