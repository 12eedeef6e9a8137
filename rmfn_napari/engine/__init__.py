"""The run loop shared by every front end: typed events and cooperative run control."""

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

__all__ = [
    "Event", "Log", "Metrics", "Progress", "RunControl", "RunFinished", "RunPaused",
    "RunResumed", "RunStarted", "ScaleSnapshot", "StageFinished", "StageStarted",
    "StopRequested", "VolumeSnapshot",
]
