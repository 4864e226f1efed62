"""A small stand-in for Slicer's ``ctk`` Python module (the CTK widgets the SegXAI panel and Slicer's
``parameterNodeWrapper`` name). Each is a distinct class, as the real connectors compare ``type(widget)``."""
from __future__ import annotations

from qt import QAbstractButton, QCheckBox, QComboBox, QDoubleSpinBox, QLineEdit, QWidget, Signal  # noqa: F401


class ctkCollapsibleButton(QAbstractButton):
    _signals = ("contentsCollapsed",)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.collapsed = False


class ctkCollapsibleGroupBox(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.collapsed = False
        self.title = ""


class ctkCheckBox(QCheckBox):
    pass


class ctkComboBox(QComboBox):
    pass


class ctkDoubleSpinBox(QDoubleSpinBox):
    pass


class ctkSliderWidget(QDoubleSpinBox):
    pass


class ctkDoubleSlider(QDoubleSpinBox):
    pass


class ctkRangeWidget(QWidget):
    pass


class ctkDoubleRangeSlider(QWidget):
    pass


class ctkPathLineEdit(QLineEdit):
    pass


class ctkDirectoryButton(QWidget):
    pass
