"""Running a notebook by hand writes nothing that is committed: figures go to the ignored
``outputs/`` unless ``make figures`` passes ``out_dir``, and compute times go beside the cached
data, not into a figure's CSV."""

from pathlib import Path

import nbformat
import pandas as pd

from emerdiff_lab import figures

ROOT = Path(__file__).resolve().parents[1]


def test_notebooks_default_to_the_ignored_outputs_folder():
    assert "outputs/" in (ROOT / ".gitignore").read_text().splitlines()
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        if params and "out_dir" in params[0].source:
            namespace = {}
            exec(params[0].source, namespace)  # noqa: S102 - our own committed notebook
            assert namespace["out_dir"] == "../outputs", path.name


def test_seconds_go_beside_the_data_not_into_the_figure_csv(tmp_path):
    import matplotlib.pyplot as plt

    ctx = figures.FigureContext(model={"model_id": "toyworld"}, cfg=None, image_size=64,
                                quick=True, out_dir=tmp_path)
    fig = plt.figure()
    table = pd.DataFrame({"image": ["a", "b"], "miou": [0.5, 0.6], "seconds": [1.2, 3.4]})
    ctx.save(fig, "ablations.png", table=table)
    plt.close(fig)
    committed = pd.read_csv(tmp_path / "ablations.csv")
    assert list(committed.columns) == ["image", "miou"]
    timings = pd.read_csv(tmp_path / "executed" / "timings" / "ablations.csv")
    assert list(timings["seconds"]) == [1.2, 3.4]
