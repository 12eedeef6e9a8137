"""What one FSC plot update costs on the GUI thread: the docked FSC plot (520 × 330 px, shown)
receives a stage's gold-standard curves (3 masks) and three curves against a reference, then
paints (``QWidget.repaint``: synchronous, the plot and its legend). Printed: the median and
the maximum over ``--repeats`` updates, ms, and the first update (the first paint of a curve
is the costliest).

    QT_API=pyqt6 xvfb-run -a python benchmarks/plot_paint.py --repeats 50

Uses only the plot's public methods (``set_gold_standard``, ``set_curve``), so the same script
times any implementation of the plots (run it with PYTHONPATH on another checkout).
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=50, help="updates timed after the first")
    args = parser.parse_args(argv)

    from qtpy.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    from rmfn_napari._widgets.plots import FSCPlot

    plot = FSCPlot()
    plot.resize(520, 330)
    plot.show()
    app.processEvents()
    rng = np.random.default_rng(0)
    cycles = np.arange(33, dtype=float)  # a 64-px box: shells 0..32
    freq = cycles / (64 * 2.0)  # 1/Å at 2 Å per pixel

    def update(k: int) -> float:
        t0 = time.perf_counter()
        base = np.exp(-(cycles / (8 + k % 5)) ** 2)
        curves = {m: np.clip(base + 0.02 * rng.standard_normal(cycles.size) + d, -0.2, 1).tolist()
                  for m, d in (("unmasked", 0.0), ("sphere", 0.05), ("auto", 0.1))}
        plot.set_gold_standard(freq, curves, {"unmasked": 9.3, "sphere": 8.5, "auto": 7.9},
                               x_label="spatial frequency (1/Å)")
        for s in range(3):
            plot.set_curve(s, freq, np.exp(-(cycles / (5 + 3 * s)) ** 2), 10.0 + s)
        plot.repaint()
        return 1000.0 * (time.perf_counter() - t0)

    first = update(0)
    times = np.array([update(k + 1) for k in range(args.repeats)])
    print(f"FSC plot update + paint: first {first:.1f} ms; then median {np.median(times):.1f} ms, "
          f"max {times.max():.1f} ms over {args.repeats}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
