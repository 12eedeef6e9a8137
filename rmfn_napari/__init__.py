"""rmfn-napari: Residual Multiplicative Filter Networks for multiscale reconstruction.

The engine (``model``, ``fitting``, ``cryoem``, ``engine``) is pure torch/numpy and never
imports Qt or napari; the napari widgets (``_widgets``) and the CLI (``cli``) are thin
shells that drive it through the same event stream (``engine.events``).
"""

__version__ = "0.1.0"
