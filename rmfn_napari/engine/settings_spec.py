"""One description of each user-facing setting, from which the CLI flags and the widget's form
are both made, so that they cannot drift apart.

A :class:`Setting` names a field of a settings dataclass (``ReconstructConfig``,
``FitImageConfig``), its CLI flag, its form label and section, its help text (the CLI's
``--help`` and the form's tooltip: the same words, with units), and what kind of input it is.
:func:`add_arguments` turns a list of them into argparse flags (every flag defaults to None:
"not given", so the preset's value stays); :func:`overrides_from_args` reads them back as
dataclass-field overrides. The widget side (Qt) lives in
:mod:`rmfn_napari._widgets.settings_form`; this module imports neither Qt nor napari.

A setting's *value* is what the user sets (a form field, a flag's argument), in engine terms:
``None`` for "not set" (e.g. ``box`` = the stack's size), tuples for ``pair`` and
``csv-ints``. Most settings are one dataclass field; a *virtual* one (``to_fields`` /
``from_config``) stands for several, e.g. ``--pose-search`` sets ``pose_search`` and
``search_in_finest``.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from ..errors import InputError

KINDS = ("choice", "int", "float", "csv-ints", "pair", "bool")

__all__ = [
    "FILTER_CHOICES", "KINDS", "Setting", "add_arguments", "check_against", "check_filters",
    "config_values", "fields_of", "filters_setting",
    "overrides_from_args", "overrides_from_values", "parse_csv_ints",
]


@dataclass(frozen=True)
class Setting:
    """One user-facing setting (see the module docstring).

    Attributes
    ----------
    name : the dataclass field it sets (for a virtual setting: its own key).
    flag : the CLI flag, e.g. ``"--lr-structure"``; its argparse ``dest`` is ``name``.
    label : the form's label ("learning rate (structure)").
    section : the form's section ("dataset", "model", "schedule", "run", "advanced"; "top"
        for a row above the sections, such as the preset).
    help : the CLI help and the form tooltip, with units.
    kind : one of :data:`KINDS`.
    choices : engine values of a ``choice`` (None: any text, e.g. a device name).
    choice_labels : what the form shows for each choice (default: the values).
    minimum, maximum, step : the form's range and step (the CLI checks through the dataclass).
    decimals : digits after the point in the form; None: shortest exact form ("0.001").
    special : text the form shows at ``minimum`` ("stack's size", "off").
    none_at_minimum : the form's ``minimum`` means None ("stack's size": no crop).
    suffix : unit shown in the form (" px").
    metavar : the CLI's metavar (a tuple of two for ``pair``).
    pair_labels : the form's labels of the two numbers of a ``pair``.
    negated_flag : a ``bool`` whose flag turns the field off (``--no-align``).
    attr : the widget attribute that holds the input (default: ``name``); a ``pair`` has two
        (``("lambda1", "lambda2")``).
    to_fields, from_config : for a virtual setting: value -> {field: value} and config -> value.
    preset_keeps : the form keeps this value when another preset is chosen (device, seed…).
    """

    name: str
    flag: str
    label: str
    section: str
    help: str
    kind: str
    choices: tuple | None = None
    choice_labels: tuple = ()
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    decimals: int | None = None
    special: str | None = None
    none_at_minimum: bool = False
    suffix: str = ""
    metavar: Any = None
    pair_labels: tuple = ()
    negated_flag: bool = False
    attr: Any = None
    to_fields: Callable[[Any], dict] | None = None
    from_config: Callable[[Any], Any] | None = None
    preset_keeps: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"setting {self.name}: kind {self.kind!r} is not one of {KINDS}")
        if self.choice_labels and len(self.choice_labels) != len(self.choices or ()):
            raise ValueError(f"setting {self.name}: one label per choice")

    @property
    def attrs(self) -> tuple[str, ...]:
        """The widget attribute name(s) of this setting's input(s)."""
        if self.attr is None:
            return (f"{self.name}1", f"{self.name}2") if self.kind == "pair" else (self.name,)
        return tuple(self.attr) if isinstance(self.attr, (tuple, list)) else (self.attr,)

    def labels(self) -> tuple[str, ...]:
        """The form's text of each choice."""
        return tuple(self.choice_labels or (str(c) for c in (self.choices or ())))

    def fields(self, value) -> dict:
        """The dataclass-field overrides that ``value`` stands for."""
        if self.to_fields is not None:
            return dict(self.to_fields(value))
        return {self.name: value}

    def value_of(self, config) -> Any:
        """This setting's value in ``config`` (a dataclass instance)."""
        if self.from_config is not None:
            return self.from_config(config)
        value = getattr(config, self.name)
        return tuple(value) if isinstance(value, list) else value


def parse_csv_ints(text: str, what: str) -> tuple[int, ...]:
    """``"10,15,35"`` -> ``(10, 15, 35)``; :class:`InputError` naming ``what`` unless every
    entry is a whole number >= 1."""
    try:
        values = tuple(int(t) for t in str(text).replace(";", ",").split(",") if t.strip())
    except ValueError:
        raise InputError(f"{what}: expected comma-separated whole numbers, got {text!r}") from None
    if not values or min(values) < 1:
        raise InputError(f"{what}: need positive whole numbers, got {text!r}")
    return values


def _csv_ints_type(what: str):
    def parse(text: str) -> tuple[int, ...]:
        try:
            return parse_csv_ints(text, what)
        except InputError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    parse.__name__ = "comma-separated integers"
    return parse


def lambdas_setting(section: str) -> Setting:
    """``--lambdas L1 L2``, the filters' frequency init: the same flag, help and form field in
    every task whose network is a residual MFN."""
    return Setting("lambdas", "--lambdas", "frequency init", section,
                   "lambda1 lambda2 of the filters' frequency init (the paper: 0.3 2.0)", "pair",
                   minimum=0.0, maximum=20.0, step=0.1, metavar=("L1", "L2"),
                   pair_labels=("λ1", "λ2"), attr=("lambda1", "lambda2"))


#: The filter kinds of ``--filters`` (:mod:`rmfn_napari.model.gabor`).
FILTER_CHOICES = ("sine", "gabor")


def filters_setting(section: str) -> Setting:
    """``--filters sine|gabor``, the network's filters: the same flag, help and form field in every
    task whose network is a residual MFN."""
    return Setting("filters", "--filters", "filters", section,
                   "sine: the paper's sine filters; gabor: sines under Gaussian windows (GaborNet), "
                   "the same frequency init on 75% of each scale's band and the windows' widths "
                   "capped so that >= 99% of each scale's energy stays inside that scale's band "
                   "(docs/gabor.md)", "choice", choices=FILTER_CHOICES, preset_keeps=True)


def check_filters(value, flag: str = "--filters") -> None:
    """InputError unless ``value`` is one of :data:`FILTER_CHOICES`."""
    if value not in FILTER_CHOICES:
        raise InputError(f"{flag} must be one of {', '.join(FILTER_CHOICES)}, got {value!r}")


def config_from_preset(dataclass_type, presets: dict, name: str, overrides: dict):
    """``dataclass_type`` filled with preset ``name`` of ``presets``, its ``preset`` field set
    to the name, then ``overrides`` (field names) applied; InputError for an unknown preset
    or setting."""
    if name not in presets:
        raise InputError(f"unknown preset {name!r} (choose from {', '.join(presets)})")
    unknown = set(overrides) - fields_of(dataclass_type)
    if unknown:
        raise InputError(f"unknown settings: {', '.join(sorted(unknown))}")
    return dataclasses.replace(dataclass_type(**presets[name]), preset=name, **overrides)


def fields_of(dataclass_type) -> set[str]:
    """Names of the fields of a dataclass type."""
    return {f.name for f in dataclasses.fields(dataclass_type)}


def check_against(settings: Sequence[Setting], dataclass_type, defaults=None) -> None:
    """Raise ``ValueError`` unless every setting names fields of ``dataclass_type`` (checked on
    its ``defaults`` instance for virtual settings), with unique names, flags and attributes."""
    names = fields_of(dataclass_type)
    config = defaults if defaults is not None else dataclass_type()
    for seen in ([s.name for s in settings], [s.flag for s in settings],
                 [a for s in settings for a in s.attrs]):
        dup = {x for x in seen if seen.count(x) > 1}
        if dup:
            raise ValueError(f"{dataclass_type.__name__} settings: duplicated {sorted(dup)}")
    for s in settings:
        if s.from_config is None and s.name not in names:
            raise ValueError(f"setting {s.name} ({s.flag}) is not a field of {dataclass_type.__name__}")
        unknown = set(s.fields(s.value_of(config))) - names
        if unknown:
            raise ValueError(f"setting {s.name} ({s.flag}) sets unknown fields {sorted(unknown)} of "
                             f"{dataclass_type.__name__}")


def add_arguments(parser: argparse.ArgumentParser, settings: Iterable[Setting],
                  defaults: dict | None = None) -> None:
    """Add one flag per setting to ``parser`` (``dest`` = the setting's name, default None
    unless ``defaults`` names one, help = the setting's help text)."""
    defaults = defaults or {}
    for s in settings:
        kw: dict[str, Any] = dict(dest=s.name, help=s.help.replace("%", "%%"),
                                  default=defaults.get(s.name))
        if s.kind == "bool":
            kw["action"] = "store_true"
        elif s.kind == "choice":
            if s.choices is not None:
                kw["choices"] = tuple(s.choices)
        elif s.kind == "int":
            kw["type"] = int
        elif s.kind == "float":
            kw["type"] = float
        elif s.kind == "csv-ints":
            kw["type"] = _csv_ints_type(s.flag)
        elif s.kind == "pair":
            kw.update(type=float, nargs=2)
        if s.metavar is not None:
            kw["metavar"] = s.metavar
        elif s.kind != "bool" and (s.kind != "choice" or s.choices is None):  # --lr-pose LR_POSE
            kw["metavar"] = s.flag.lstrip("-").upper().replace("-", "_")
        parser.add_argument(s.flag, **kw)


def overrides_from_values(settings: Iterable[Setting], values: dict) -> dict:
    """Dataclass-field overrides for the settings whose value is in ``values``."""
    out: dict = {}
    for s in settings:
        if s.name in values:
            out.update(s.fields(values[s.name]))
    return out


def overrides_from_args(args: argparse.Namespace, settings: Iterable[Setting]) -> dict:
    """Dataclass-field overrides for the flags that were given (not None)."""
    out: dict = {}
    for s in settings:
        value = getattr(args, s.name, None)
        if value is None or (s.kind == "bool" and value is False):
            continue
        if s.kind == "bool" and s.negated_flag:
            value = not value
        elif s.kind == "pair":
            value = tuple(value)
        out.update(s.fields(value))
    return out


def config_values(settings: Iterable[Setting], config) -> dict:
    """``{setting name: value}`` of every setting in ``config``."""
    return {s.name: s.value_of(config) for s in settings}
