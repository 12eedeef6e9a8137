"""Rendering engine events on a terminal: a progress bar and one summary line per stage."""

from __future__ import annotations

import signal
import sys
from contextlib import contextmanager
from typing import Iterator

from ..engine.control import RunControl
from ..engine.events import (
    Event, Log, Metrics, Progress, RunFinished, RunPaused, RunStarted, StageFinished, StageStarted,
)


class SignalStop:
    """The signal that asked a run to stop, if any, and the exit status it calls for: 128 + its
    number, as a shell reports a process ended by it (130 for SIGINT, 143 for SIGTERM)."""

    signum: int | None = None

    @property
    def exit_status(self) -> int:
        return 0 if self.signum is None else 128 + int(self.signum)


@contextmanager
def stop_on_interrupt(control: RunControl, announce: bool = True) -> Iterator[SignalStop]:
    """First Ctrl-C (SIGINT) or SIGTERM asks the run to stop cleanly (its outputs are written,
    marked stopped); a second one aborts (KeyboardInterrupt for SIGINT, exit 143 for SIGTERM).
    ``announce``: say so on stderr (one rank of several stays silent).

    Yields a :class:`SignalStop`: the command returns its ``exit_status``."""
    received = SignalStop()
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.getsignal(s) for s in signals}

    def restore():
        for s, handler in previous.items():
            signal.signal(s, handler)

    def handler(signum, frame):
        if control.stop_requested:
            restore()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)
        received.signum = signum
        again = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        if announce:
            print(f"\n{signal.Signals(signum).name}: stopping after this step, writing the outputs "
                  f"({again} again to abort)...", file=sys.stderr)
        control.request_stop()

    try:
        for s in signals:
            signal.signal(s, handler)
    except ValueError:  # not in the main thread
        yield received
        return
    try:
        yield received
    finally:
        restore()


def _gold_text(values: dict) -> str:
    """'7.9 Å (auto mask; sphere 8.3 Å, unmasked 9.1 Å)' from a gold_standard Metrics event."""
    def fmt(r):
        return "not resolved" if r is None else f"{r:.2f} Å"

    res = values["resolution_A"]
    head = values["headline"]
    others = ", ".join(f"{k} {fmt(v)}" for k, v in res.items() if k != head)
    text = f"FSC0.143 {fmt(res[head])} ({head} mask; {others})"
    return text if values.get("trusted", True) else f"{text} UNTRUSTED: {values.get('verdict', '')}"


def printed_values(ev: Metrics) -> dict:
    """The scalar values of a Metrics event as the stage line prints them: a ``scale`` (the
    engine's 0-based index) is shown 1-based, like the files and layers (``scale=1`` is the
    coarsest)."""
    vals = {k: v for k, v in ev.values.items() if isinstance(v, (int, float, str))}
    if isinstance(vals.get("scale"), int) and not isinstance(vals["scale"], bool):
        vals["scale"] += 1
    return vals


def consume(events: Iterator[Event], quiet: bool = False) -> RunFinished:
    """Drive an engine run to its end, showing progress; return its RunFinished event.

    The bar is drawn only on a terminal (tqdm disables itself otherwise); stage summaries
    and warnings always go to stderr. Stages and scales are printed 1-based (``stage 1:``,
    ``scale=1``), as the files and layers are named.
    """
    from tqdm import tqdm

    bar = None
    finished = None
    stage_metrics: dict[int, dict] = {}
    for ev in events:
        if isinstance(ev, RunStarted):
            bar = tqdm(total=ev.total_steps, disable=quiet or not sys.stderr.isatty(),
                       unit="step", dynamic_ncols=True, file=sys.stderr)
            if not quiet:
                print(f"{ev.task}: {ev.n_stages} stages, {ev.total_steps} steps on {ev.device}", file=sys.stderr)
        elif isinstance(ev, StageStarted) and bar is not None:
            bar.set_description(f"stage {ev.stage + 1}/{ev.n_stages} (band {ev.band_cycles:.1f} cyc/box)")
        elif isinstance(ev, Progress) and bar is not None:
            bar.update(ev.step - bar.n)
            bar.set_postfix(loss=f"{ev.loss:.4g}", **{k: f"{v:.3g}" for k, v in ev.extra.items()})
        elif isinstance(ev, Metrics) and ev.name == "gold_standard":
            stage_metrics.setdefault(ev.stage, {})["gold_standard"] = _gold_text(ev.values)
        elif isinstance(ev, Metrics):
            stage_metrics.setdefault(ev.stage, {}).update(printed_values(ev))
        elif isinstance(ev, StageFinished) and not quiet:
            vals = {**stage_metrics.get(ev.stage, {}), **{k: v for k, v in ev.summary.items()
                                                        if isinstance(v, (int, float, str))}}
            text = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in vals.items())
            early = " (ended early)" if ev.skipped_early else ""
            line = f"stage {ev.stage + 1}: {ev.steps_done} steps in {ev.seconds:.1f} s{early}; {text}"
            (bar.write(line, file=sys.stderr) if bar is not None else print(line, file=sys.stderr))
        elif isinstance(ev, Log) and (not quiet or ev.level == "warning"):
            (bar.write(ev.message, file=sys.stderr) if bar is not None else print(ev.message, file=sys.stderr))
        elif isinstance(ev, RunPaused) and not quiet:
            print(f"paused at step {ev.step}", file=sys.stderr)
        elif isinstance(ev, RunFinished):
            finished = ev
    if bar is not None:
        bar.close()
    if finished is None:
        raise RuntimeError("the run ended without a RunFinished event")
    return finished
