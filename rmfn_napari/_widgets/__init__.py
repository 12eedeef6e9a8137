"""napari dock widgets of rmfn-napari (contributed under Plugins ▸ rMFN by ``napari.yaml``).

* :class:`FitImageWidget` — 2D coarse-to-fine image fitting (paper §5).
* :class:`ReconstructWidget` — cryo-EM ab initio reconstruction (paper §6) with live FSC and
  pose-error plots.

Layout of the package: ``runner`` (thread worker, run control, event delivery to the GUI
thread), ``layers`` (events -> layers), ``plots`` (live plots and tables), ``controls`` (run
buttons, progress, scale stepper), ``fit_image`` / ``reconstruct`` (the forms). The widgets
hold no science: every number shown comes from an engine event.
"""

from .fit_image import FitImageWidget
from .reconstruct import ReconstructWidget

__all__ = ["FitImageWidget", "ReconstructWidget"]
