"""docs/tour.ipynb, the guided tour: committed with a real run's outputs, and run top to bottom on a tiny one."""
import json
import re
from pathlib import Path

import pytest

TOUR = Path(__file__).parent.parent / "docs" / "tour.ipynb"


def test_the_committed_tour_names_its_run_and_is_small():
    nb = json.loads(TOUR.read_text())
    first = "".join(nb["cells"][0]["source"])
    assert "python -m lowlevel.train" in first and "--run-name" in first
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c["outputs"] for c in code[1:]), "every cell after the parameters has its outputs"
    assert not [o for c in code for o in c["outputs"] if o["output_type"] == "error"]
    pictures = sum("image/png" in o.get("data", {}) for c in code for o in c["outputs"])
    assert pictures >= 7 and TOUR.stat().st_size < 2_000_000


@pytest.mark.slow
def test_the_tour_runs_top_to_bottom_on_a_tiny_run(tmp_path, data):
    """With RUN = "" the notebook trains a tiny run on the data it is given, then every section runs."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(TOUR, as_version=4)
    parameters = next(c for c in nb.cells if c.cell_type == "code")
    assert "\nRUN = " in parameters.source
    parameters.source = f"RUN = ''\nDATA = {str(data)!r}\nIMAGES = 2000"
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    for phrase in ("largest difference from the model's block", "folded against conv + batch norm"):
        gap = float(re.search(re.escape(phrase) + r"[^:]*: ([0-9.e+-]+)", text).group(1))
        assert gap < 1e-4, (phrase, gap)  # the raw ops by hand are the model's own, to float32 rounding
    assert "int8.tflite" in text and "training step" in text
