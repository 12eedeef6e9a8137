"""The settings form of a dock widget, generated from the engine's settings spec.

:class:`SettingsForm` makes one input per :class:`~rmfn_napari.engine.settings_spec.Setting`
(tooltip = the CLI's help text), in folding sections (:class:`FoldingSection`), reads them back
as engine values and fills them from a config or a preset. Widgets add their own rows (the
dataset pickers) to a section with :meth:`SettingsForm.add_row`. Numbers without fixed decimals
show their shortest exact form ("0.001", "5e-05") in a :class:`GeneralSpinBox`, so that a
learning rate never reads "0." at a narrow dock width.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

from magicgui.widgets import FileEdit
from qtpy.QtGui import QValidator
from qtpy.QtWidgets import (
    QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QHBoxLayout, QLabel,
    QLineEdit, QSizePolicy, QSpinBox, QStyle, QStyleOptionSpinBox, QToolButton, QVBoxLayout,
    QWidget,
)
from qtpy.QtCore import QEvent, QRect, Qt

from ..engine.settings_spec import Setting, parse_csv_ints

__all__ = ["FoldingSection", "GeneralSpinBox", "PathField", "SettingsForm"]


class _WholeText:
    """Mixin for spin boxes that never shrink below the width of their longest text (their
    range's ends, the special value text, prefix and suffix) in the style they are drawn with.
    napari's style sheet gives every spin box a fixed ``min-width``, which a layout takes over
    the size hint: rows then cut "stack's size" to "ck's size" and "0.80 µm" to "0.8". After
    each polish (style sheet applied) the minimum width becomes the size hint's, so a form row
    that cannot give it that much beside its label wraps below it instead."""

    def event(self, ev):  # noqa: D102 - Qt override
        handled = super().event(ev)
        if ev.type() in (QEvent.Type.Polish, QEvent.Type.StyleChange):
            self.setMinimumWidth(max(self.sizeHint().width(), self.whole_text_width()))
        return handled

    def whole_text_width(self) -> int:
        """Width (px) the box needs to show its longest text whole: the text's advance plus the
        frame, padding and buttons of the style in use. Qt's size hint leaves out a style
        sheet's padding under Qt 5 (napari's: "0.80 µm" got 50 of the 54 px it needs)."""
        texts = [self.textFromValue(self.minimum()), self.textFromValue(self.maximum())]
        longest = max(self.fontMetrics().horizontalAdvance(self.prefix() + t + self.suffix())
                      for t in texts)
        if self.specialValueText():
            longest = max(longest, self.fontMetrics().horizontalAdvance(self.specialValueText()))
        opt = QStyleOptionSpinBox()
        self.initStyleOption(opt)
        opt.rect = QRect(0, 0, 400, max(self.height(), 24))
        field = self.style().subControlRect(QStyle.ComplexControl.CC_SpinBox, opt,
                                            QStyle.SubControl.SC_SpinBoxEditField, self)
        return longest + (400 - field.width()) + 6  # + the line edit's own margins


class WholeTextSpinBox(_WholeText, QSpinBox):
    """A QSpinBox that shows its whole text (:class:`_WholeText`).

    Hand-made rather than magicgui's ``SpinBox``: it carries a suffix and a special-value text,
    and keeps its whole text under napari's style sheet, which magicgui's does not."""


class WholeTextDoubleSpinBox(_WholeText, QDoubleSpinBox):
    """A QDoubleSpinBox that shows its whole text (:class:`_WholeText`).

    Hand-made rather than magicgui's ``FloatSpinBox``: that one shows 0.001 as "0.00" (two
    decimals unless changed through its native widget), has no suffix ("µm") or special-value
    text, and napari's style sheet sets its min-width."""


class GeneralSpinBox(WholeTextDoubleSpinBox):
    """A spin box showing its value in the shortest exact form (``0.001``, ``5e-05``); the
    arrows multiply or divide by 2 when no fixed step is given (learning rates).

    magicgui's ``FloatSpinBox`` has fixed decimals (0.001 reads "0.00", 5e-05 reads "0.00"):
    a learning rate needs this box."""

    def __init__(self, parent: QWidget | None = None, log_steps: bool = True):
        super().__init__(parent)
        self.setDecimals(12)  # storage precision; the text is formatted below
        self.log_steps = log_steps

    def textFromValue(self, value: float) -> str:  # noqa: N802 - Qt name
        """``f"{value:.6g}"`` (``0.001``, ``1e-05``)."""
        return f"{value:.6g}"

    def valueFromText(self, text: str) -> float:  # noqa: N802 - Qt name
        """The number typed (prefix and suffix removed)."""
        try:
            return float(self._strip(text))
        except ValueError:
            return self.value()

    def validate(self, text: str, pos: int):
        """Acceptable: a number in range; Intermediate: a number being typed."""
        body = self._strip(text)
        if self.specialValueText() and text == self.specialValueText():
            return QValidator.Acceptable, text, pos
        try:
            value = float(body)
        except ValueError:
            ok = all(c in "0123456789.eE+-" for c in body)
            return (QValidator.Intermediate if ok else QValidator.Invalid), text, pos
        if math.isfinite(value) and self.minimum() <= value <= self.maximum():
            return QValidator.Acceptable, text, pos
        return QValidator.Intermediate, text, pos

    def fixup(self, text: str) -> str:
        return self.textFromValue(self.value())

    def stepBy(self, steps: int) -> None:  # noqa: N802 - Qt name
        """×2 per step up, ÷2 per step down (``log_steps``), else the plain step."""
        if not self.log_steps:
            return super().stepBy(steps)
        self.setValue(min(self.maximum(), max(self.minimum(), self.value() * 2.0 ** steps)))

    def _strip(self, text: str) -> str:
        text = text.strip()
        if self.prefix() and text.startswith(self.prefix().strip()):
            text = text[len(self.prefix().strip()):]
        if self.suffix() and text.endswith(self.suffix().strip()):
            text = text[: -len(self.suffix().strip())]
        return text.strip()


class _CaptionedFileEdit(FileEdit):
    """magicgui's FileEdit whose file dialog is titled with the field's caption."""

    def __init__(self, caption: str, **kwargs):
        self._caption = caption
        super().__init__(**kwargs)

    @property
    def _btn_text(self) -> str:  # FileEdit titles its dialog (and labels its button) with this
        return getattr(self, "_caption", None) or super()._btn_text


class PathField(QWidget):
    """A file to read: magicgui's ``FileEdit`` (a line edit and a button opening the file
    dialog; :attr:`file_edit`), its button shortened to "…" (the dock is narrow) with
    ``caption`` as its tooltip. ``edit`` is the line edit (QLineEdit), ``button`` the button;
    :meth:`path` is the text as typed ('' when empty: magicgui's value would read ``Path(".")``).
    """

    def __init__(self, caption: str, filter_: str, placeholder: str = "",
                 parent: QWidget | None = None):
        super().__init__(parent)
        self.caption, self.filter = caption, filter_
        self.file_edit = _CaptionedFileEdit(caption, mode="r", filter=filter_, nullable=True)
        self.edit: QLineEdit = self.file_edit.line_edit.native
        self.edit.setPlaceholderText(placeholder)
        self.button = self.file_edit.choose_btn.native
        self.button.setText("…")
        self.button.setToolTip(caption)
        self.button.setMaximumWidth(self.button.fontMetrics().horizontalAdvance("…") + 24)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.file_edit.native)

    def path(self) -> str:
        """The path typed or chosen ('' when empty)."""
        return self.edit.text().strip()

    def setToolTip(self, text: str) -> None:  # noqa: N802 - Qt name
        """The tooltip of the whole field and of its line edit."""
        super().setToolTip(text)
        self.edit.setToolTip(text)


class FoldingSection(QWidget):
    """A titled section whose rows fold away under its header button."""

    def __init__(self, title: str, expanded: bool = True, parent: QWidget | None = None):
        super().__init__(parent)
        self.title = title
        self.header = QToolButton()
        self.header.setText(title)
        self.header.setCheckable(True)
        self.header.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        self.header.setAutoRaise(True)
        self.header.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        self.header.setToolTip(f"Show or hide the {title} settings")
        self.body = QWidget()
        self.form = QFormLayout(self.body)
        self.form.setContentsMargins(12, 0, 0, 4)
        self.form.setRowWrapPolicy(QFormLayout.WrapLongRows)
        self.form.setFieldGrowthPolicy(QFormLayout.AllNonFixedFieldsGrow)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(0)
        lay.addWidget(self.header)
        lay.addWidget(self.body)
        self.header.toggled.connect(self._toggled)
        self.header.setChecked(expanded)
        self._toggled(expanded)

    def _toggled(self, on: bool) -> None:
        self.header.setArrowType(Qt.DownArrow if on else Qt.RightArrow)
        self.body.setVisible(on)

    @property
    def expanded(self) -> bool:
        """Whether the rows are shown."""
        return self.header.isChecked()

    def set_expanded(self, on: bool) -> None:
        """Show (True) or fold (False) the rows."""
        self.header.setChecked(on)


class SettingsForm(QWidget):
    """Inputs for ``settings`` in folding ``sections``.

    Parameters
    ----------
    settings : the spec (``RECONSTRUCT_SETTINGS``, ``FIT_IMAGE_SETTINGS``).
    sections : section names in order; a setting's ``section`` must be one of them or "top".
    folded : sections that start folded.
    choices : choices known only at run time, by setting name (the devices of this machine).

    ``inputs[name]`` is a setting's input widget (a tuple of two for a ``pair``);
    ``sections[name]`` a :class:`FoldingSection`.
    """

    def __init__(self, settings: Sequence[Setting], sections: Sequence[str],
                 folded: Iterable[str] = (), choices: dict | None = None,
                 parent: QWidget | None = None):
        super().__init__(parent)
        self.settings = tuple(settings)
        self.by_name = {s.name: s for s in self.settings}
        self.top = QFormLayout()
        self.top.setRowWrapPolicy(QFormLayout.WrapLongRows)
        self.sections: dict[str, FoldingSection] = {}
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(2)
        lay.addLayout(self.top)
        folded = set(folded)
        for name in sections:
            self.sections[name] = FoldingSection(name, expanded=name not in folded)
            lay.addWidget(self.sections[name])
        self.inputs: dict[str, Any] = {}
        choices = choices or {}
        for s in self.settings:
            widget = self._make_input(s, choices.get(s.name))
            layout = self.top if s.section == "top" else self.sections[s.section].form
            label = QLabel(s.label)
            label.setToolTip(s.help)
            layout.addRow(label, widget)

    # ---- building -----------------------------------------------------------------------
    def _make_input(self, s: Setting, run_time_choices) -> QWidget:
        if s.kind == "pair":
            row = QWidget()
            lay = QHBoxLayout(row)
            lay.setContentsMargins(0, 0, 0, 0)
            spins = []
            for text in s.pair_labels or ("1", "2"):
                spin = self._number(s, float)
                lay.addWidget(QLabel(text))
                lay.addWidget(spin, 1)
                spins.append(spin)
            self.inputs[s.name] = tuple(spins)
            row.setToolTip(s.help)
            return row
        if s.kind == "choice":
            widget = QComboBox()
            values = list(run_time_choices if run_time_choices is not None else s.choices or ())
            labels = s.labels() if s.choices is not None and run_time_choices is None else values
            for value, text in zip(values, labels):
                widget.addItem(str(text), value)
        elif s.kind == "bool":
            widget = QCheckBox()
        elif s.kind == "csv-ints":
            widget = QLineEdit()
        else:
            widget = self._number(s, int if s.kind == "int" else float)
        widget.setToolTip(s.help)
        self.inputs[s.name] = widget
        return widget

    @staticmethod
    def _number(s: Setting, kind) -> QWidget:
        if kind is int:
            spin = WholeTextSpinBox()
        elif s.decimals is not None:
            spin = WholeTextDoubleSpinBox()
            spin.setDecimals(s.decimals)
        else:
            spin = GeneralSpinBox(log_steps=s.step is None)
        lo = s.minimum if s.minimum is not None else (0 if kind is int else 0.0)
        hi = s.maximum if s.maximum is not None else (2**31 - 1 if kind is int else 1e9)
        spin.setRange(kind(lo), kind(hi))
        if s.step is not None:
            spin.setSingleStep(kind(s.step))
        if s.special:
            spin.setSpecialValueText(s.special)
        if s.suffix:
            spin.setSuffix(s.suffix)
        spin.setToolTip(s.help)
        spin.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        return spin

    def add_row(self, section: str, label: str, widget: QWidget, tooltip: str | None = None,
                index: int | None = None) -> None:
        """Add a widget's own row to ``section`` ("top" for the rows above the sections),
        at ``index`` (default: the end)."""
        layout = self.top if section == "top" else self.sections[section].form
        if tooltip:
            widget.setToolTip(tooltip)
        label_widget = QLabel(label)
        if widget.toolTip():
            label_widget.setToolTip(widget.toolTip())
        if index is None:
            layout.addRow(label_widget, widget)
        else:
            layout.insertRow(index, label_widget, widget)

    # ---- rows -----------------------------------------------------------------------------
    def _layout_of(self, widget: QWidget):
        for layout in (self.top, *(sec.form for sec in self.sections.values())):
            if layout.indexOf(widget) >= 0:
                return layout
        return None

    def row_label(self, widget: QWidget) -> QWidget | None:
        """The label of ``widget``'s row (None when it is not a row of this form)."""
        layout = self._layout_of(widget)
        return None if layout is None else layout.labelForField(widget)

    def set_row_visible(self, widget: QWidget, visible: bool) -> None:
        """Show or hide ``widget``'s row (the field and its label)."""
        widget.setVisible(visible)
        label = self.row_label(widget)
        if label is not None:
            label.setVisible(visible)

    def set_folded(self, folded: bool) -> None:
        """Fold (True) or open (False) every section."""
        for section in self.sections.values():
            section.set_expanded(not folded)

    def input_widgets(self) -> list[QWidget]:
        """Every setting's input (both numbers of a pair)."""
        out: list[QWidget] = []
        for widget in self.inputs.values():
            out.extend(widget if isinstance(widget, tuple) else (widget,))
        return out

    # ---- values ---------------------------------------------------------------------------
    def value(self, name: str):
        """The engine value of setting ``name`` (:class:`InputError` naming the label and the
        flag for text that is not one)."""
        s, widget = self.by_name[name], self.inputs[name]
        if s.kind == "pair":
            return tuple(float(w.value()) for w in widget)
        if s.kind == "choice":
            data = widget.currentData()
            return data if data is not None else widget.currentText()
        if s.kind == "bool":
            return bool(widget.isChecked())
        if s.kind == "csv-ints":
            return parse_csv_ints(widget.text(), f"{s.label} ({s.flag})")
        if s.none_at_minimum and widget.value() == widget.minimum():
            return None
        return int(widget.value()) if s.kind == "int" else float(widget.value())

    def values(self) -> dict:
        """``{setting name: engine value}`` of every input."""
        return {s.name: self.value(s.name) for s in self.settings}

    def set_value(self, name: str, value) -> bool:
        """Put an engine value into setting ``name``'s input; False (input unchanged) when the
        value does not fit it (an unknown choice, a number out of range, a wrong type)."""
        s, widget = self.by_name[name], self.inputs[name]
        try:
            if s.kind == "pair":
                a, b = (float(v) for v in value)
                if not all(w.minimum() <= v <= w.maximum() for w, v in zip(widget, (a, b))):
                    return False
                widget[0].setValue(a)
                widget[1].setValue(b)
            elif s.kind == "choice":
                index = widget.findData(value)
                if index < 0:
                    index = widget.findText(str(value))
                if index < 0:
                    return False
                widget.setCurrentIndex(index)
            elif s.kind == "bool":
                if not isinstance(value, bool):
                    return False
                widget.setChecked(value)
            elif s.kind == "csv-ints":
                widget.setText(",".join(str(int(v)) for v in value))
            else:
                number = widget.minimum() if value is None and s.none_at_minimum else value
                if isinstance(number, bool) or not widget.minimum() <= float(number) <= widget.maximum():
                    return False
                widget.setValue(int(number) if s.kind == "int" else float(number))
        except (TypeError, ValueError):
            return False
        return True

    def set_values(self, values: dict, skip: Iterable[str] = ()) -> list[str]:
        """Set every known setting in ``values`` except ``skip``; returns the names refused."""
        skip = set(skip)
        return [name for name, value in values.items()
                if name in self.by_name and name not in skip and not self.set_value(name, value)]

    def set_config(self, config, keep_run_settings: bool = False) -> None:
        """Fill the form from a config (a dataclass); ``keep_run_settings``: leave the settings
        a preset does not change (device, seed…, ``preset_keeps``) as they are."""
        for s in self.settings:
            if keep_run_settings and (s.preset_keeps or s.name == "preset"):
                continue
            self.set_value(s.name, s.value_of(config))
