"""The plots read what training writes and produce real images."""
import numpy as np
import pandas as pd

from lowlevel import figures, plots


def test_learning_curves_and_cli(tmp_path):
    pd.DataFrame({"epoch": [1, 2, 3], "step": [10, 20, 30], "train_loss": [2.0, 1.5, 1.2],
                  "train_accuracy": [0.3, 0.5, 0.6], "val_loss": [1.9, 1.6, 1.4], "val_accuracy": [0.35, 0.45, 0.5],
                  "lr": [0.1, 0.05, 0.0], "images_per_s": [100.0] * 3, "elapsed_s": [1.0, 2.0, 3.0]}
                 ).to_csv(tmp_path / "history.csv", index=False)
    assert plots.main([str(tmp_path)]) == 0
    png = (tmp_path / "learning_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert plots.main([str(tmp_path / "nope")]) == 2


def test_confusion_matrix_png(tmp_path):
    m = np.diag([5] * 10) + 1
    out = figures.confusion_matrix(m, [f"c{i}" for i in range(10)], tmp_path / "cm.png", "t")
    assert out.read_bytes()[:4] == b"\x89PNG"
