"""parity_energy.png (issue 25): absolute energies of -97,080 eV spread over 1 eV are drawn relative
to their mean (no offset tick labels running into each other or the title); RMSE carries its unit."""
import importlib

import numpy as np

# the module, not the function fastcsi.inference re-exports under the same name
evaluate_module = importlib.import_module("fastcsi.inference.evaluate")


def test_parity_plot_of_large_total_energies_is_readable(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(evaluate_module, "save_figure", lambda fig, path, dpi=100: figures.append(fig))
    rng = np.random.default_rng(0)
    ref = -97080.0 + rng.normal(0, 0.3, 200)
    pred = ref + rng.normal(0, 0.02, 200)
    evaluate_module._parity_plot(pred, ref, "energy", tmp_path / "parity_energy.png",
                                 {"mae": 15.9, "rmse": 20.1, "unit": "meV"})
    (fig,) = figures
    ax = fig.axes[0]
    fig.canvas.draw()
    assert ax.get_title() == "energy: MAE 15.9 meV, RMSE 20.1 meV"
    assert "relative to -97,080" in ax.get_xlabel()
    for axis in (ax.xaxis, ax.yaxis):
        assert axis.get_offset_text().get_text() == ""
        labels = [t.get_text() for t in axis.get_ticklabels() if t.get_text()]
        assert labels and max(len(t) for t in labels) <= 5  # e.g. "−0.4", not "−97080.25"
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_forces_are_not_shifted(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(evaluate_module, "save_figure", lambda fig, path, dpi=100: figures.append(fig))
    ref = np.linspace(-2, 2, 50)
    evaluate_module._parity_plot(ref + 0.01, ref, "forces", tmp_path / "p.png", {"mae": 10, "rmse": 10, "unit": "meV/Å"})
    assert figures[0].axes[0].get_xlabel() == "reference forces (eV/Å)"
    import matplotlib.pyplot as plt

    plt.close(figures[0])
