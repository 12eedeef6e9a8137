"""The run loop shared by every front end: typed events, cooperative run control and the
output folder a run owns (checked, locked, written atomically)."""

from .control import RunControl, StopRequested
from .events import (
    Event,
    Log,
    Metrics,
    Progress,
    RunFinished,
    RunPaused,
    RunResumed,
    RunStarted,
    ScaleSnapshot,
    StageFinished,
    StageStarted,
    VolumeSnapshot,
)
from .atomic import clean_stale_temps
from .outdir import (
    OutputDirError,
    check_output_dir,
    estimate_fit_image_bytes,
    estimate_reconstruct_bytes,
    estimate_simulate_bytes,
    prepare_run_dir,
)
from .runlock import RunLock

__all__ = [
    "Event", "Log", "Metrics", "OutputDirError", "Progress", "RunControl", "RunFinished",
    "RunLock", "RunPaused", "RunResumed", "RunStarted", "ScaleSnapshot", "StageFinished",
    "StageStarted", "StopRequested", "VolumeSnapshot", "check_output_dir", "clean_stale_temps",
    "estimate_fit_image_bytes", "estimate_reconstruct_bytes", "estimate_simulate_bytes",
    "prepare_run_dir",
]
