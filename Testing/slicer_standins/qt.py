"""A small stand-in for PythonQt's ``qt`` module: just enough widgets, signals and the .ui loader for
``SegXAI/SegXAI.py`` and Slicer's own ``parameterNodeWrapper`` to run without Qt.

It mimics PythonQt's surface (properties as attributes, ``widget.connect("signal(args)", slot)``,
``signal.connect``), not Qt's behaviour in depth. Only tests use it.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET


class Signal:
    """A PythonQt-style signal: ``connect``, ``disconnect``, ``emit``; silent while its owner blocks signals."""

    def __init__(self, owner=None):
        self._owner = owner
        self._slots = []

    def connect(self, slot):
        self._slots.append(slot)

    def disconnect(self, slot=None):
        if slot is None:
            self._slots.clear()
        else:
            self._slots.remove(slot)

    def emit(self, *args):
        if self._owner is not None and self._owner._signalsBlocked:
            return
        for slot in list(self._slots):
            try:
                slot(*args)
            except TypeError as err:  # PythonQt drops arguments a slot does not take
                if "positional argument" not in str(err):
                    raise
                slot()


class Qt:
    WaitCursor = 3
    Vertical = 2
    Horizontal = 1


class QObject:
    _signals = ()

    def __init__(self, parent=None):
        self._signalsBlocked = False
        self._children = []
        self._parent = None
        self._properties = {}
        self.name = ""
        for signal in ("destroyed",) + tuple(type(self)._all_signals()):
            setattr(self, signal, Signal(self))
        if parent is not None:
            self.setParent(parent)

    @classmethod
    def _all_signals(cls):
        names = []
        for klass in reversed(cls.__mro__):
            names += list(klass.__dict__.get("_signals", ()))
        return names

    @property
    def objectName(self):
        return self.name

    def setObjectName(self, name):
        self.name = name

    def setParent(self, parent):
        if self._parent is not None and self in self._parent._children:
            self._parent._children.remove(self)
        self._parent = parent
        if parent is not None:
            parent._children.append(self)

    def parent(self):
        return self._parent

    def children(self):
        return list(self._children)

    def findChildren(self, cls=None):
        found = []
        for child in self._children:
            if cls is None or isinstance(child, cls):
                found.append(child)
            found += child.findChildren(cls)
        return found

    def property(self, name):
        return self._properties.get(name)

    def setProperty(self, name, value):
        self._properties[name] = value

    def blockSignals(self, block):
        old, self._signalsBlocked = self._signalsBlocked, bool(block)
        return old

    def connect(self, signature, slot):
        getattr(self, signature.split("(")[0]).connect(slot)

    def disconnect(self, signature, slot=None):
        getattr(self, signature.split("(")[0]).disconnect(slot)

    def isWidgetType(self):
        return False

    def className(self):
        return type(self).__name__

    def deleteLater(self):
        pass


class QLayout(QObject):
    def __init__(self, parent=None):
        super().__init__(None)
        self._widget = parent if isinstance(parent, QWidget) else None
        self._items = []
        if self._widget is not None:
            self._widget._layout = self

    def addWidget(self, widget, *args):
        self._items.append(widget)
        if self._widget is not None:
            widget.setParent(self._widget)

    def addLayout(self, layout, *args):
        self._items.append(layout)

    def addRow(self, *items):
        for item in items:
            if isinstance(item, QWidget):
                self.addWidget(item)

    def addStretch(self, *args):
        pass

    def count(self):
        return len(self._items)


class QVBoxLayout(QLayout):
    pass


class QHBoxLayout(QLayout):
    pass


class QGridLayout(QLayout):
    pass


class QFormLayout(QLayout):
    pass


class QWidget(QObject):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.visible = True
        self.enabled = True
        self.toolTip = ""
        self._layout = None

    def isWidgetType(self):
        return True

    def layout(self):
        return self._layout

    def setLayout(self, layout):
        self._layout = layout
        layout._widget = self
        for item in layout._items:
            if isinstance(item, QWidget):
                item.setParent(self)

    def show(self):
        self.visible = True

    def hide(self):
        self.visible = False

    def setVisible(self, visible):
        self.visible = bool(visible)

    def setEnabled(self, enabled):
        self.enabled = bool(enabled)

    def setToolTip(self, text):
        self.toolTip = text


class QFrame(QWidget):
    pass


class QLabel(QWidget):
    def __init__(self, text="", parent=None):
        super().__init__(parent if not isinstance(text, QObject) else text)
        self.text = text if isinstance(text, str) else ""
        self.wordWrap = False

    def setText(self, text):
        self.text = text


class QAbstractButton(QWidget):
    _signals = ("clicked", "toggled", "pressed", "released")

    def __init__(self, text="", parent=None):
        super().__init__(parent if not isinstance(text, QObject) else text)
        self.text = text if isinstance(text, str) else ""
        self.checkable = False
        self._checked = False

    @property
    def checked(self):
        return self._checked

    @checked.setter
    def checked(self, value):
        value = bool(value)
        if value != self._checked:
            self._checked = value
            self.toggled.emit(value)
            self._stateChanged(value)

    def _stateChanged(self, value):
        pass

    def setChecked(self, value):
        self.checked = value

    def isChecked(self):
        return self._checked

    def click(self):
        if self.checkable:
            self.checked = not self._checked
        self.clicked.emit(self._checked)


class QPushButton(QAbstractButton):
    pass


class QToolButton(QAbstractButton):
    pass


class QCheckBox(QAbstractButton):
    _signals = ("stateChanged",)

    def __init__(self, text="", parent=None):
        super().__init__(text, parent)
        self.checkable = True

    def _stateChanged(self, value):
        self.stateChanged.emit(2 if value else 0)


class QRadioButton(QCheckBox):
    pass


class QGroupBox(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.title = ""


class QComboBox(QWidget):
    _signals = ("currentIndexChanged", "currentTextChanged", "activated")

    def __init__(self, parent=None):
        super().__init__(parent)
        self._items = []
        self._current = -1
        self.editable = False

    def _set_current(self, index):
        index = int(index)
        if index != self._current:
            self._current = index
            self.currentIndexChanged.emit(index)
            self.currentTextChanged.emit(self.currentText)

    @property
    def currentIndex(self):
        return self._current

    @currentIndex.setter
    def currentIndex(self, index):
        self._set_current(index if -1 <= index < len(self._items) else -1)

    def setCurrentIndex(self, index):
        self.currentIndex = index

    @property
    def currentText(self):
        return self._items[self._current][0] if self._current >= 0 else ""

    def setCurrentText(self, text):
        index = self.findText(text)
        if index >= 0:
            self.currentIndex = index

    def currentData(self):
        return self._items[self._current][1] if self._current >= 0 else None

    def addItem(self, text, data=None):
        self._items.append((str(text), data))
        if self._current < 0:
            self._set_current(0)

    def addItems(self, texts):
        for text in texts:
            self.addItem(text)

    def insertSeparator(self, index):
        pass

    def clear(self):
        self._items = []
        self._set_current(-1)

    @property
    def count(self):  # a Q_PROPERTY: PythonQt hands back the number, so ``count()`` fails as it does in Slicer
        return len(self._items)

    def itemText(self, index):
        return self._items[index][0]

    def itemData(self, index):
        return self._items[index][1] if 0 <= index < len(self._items) else None

    def findText(self, text):
        for index, (item, _) in enumerate(self._items):
            if item == text:
                return index
        return -1


class QLineEdit(QWidget):
    _signals = ("textChanged", "editingFinished")

    def __init__(self, parent=None):
        super().__init__(parent)
        self._text = ""
        self.placeholderText = ""
        self.readOnly = False

    @property
    def text(self):
        return self._text

    @text.setter
    def text(self, value):
        if value != self._text:
            self._text = value
            self.textChanged.emit(value)

    def setText(self, value):
        self.text = value


class QTextEdit(QWidget):
    _signals = ("textChanged",)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.plainText = ""
        self.readOnly = False
        self.placeholderText = ""

    def setPlainText(self, text):
        self.plainText = text
        self.textChanged.emit()

    def toPlainText(self):
        return self.plainText

    def append(self, text):
        self.plainText = (self.plainText + "\n" if self.plainText else "") + text

    def clear(self):
        self.plainText = ""

    def ensureCursorVisible(self):
        pass


class QPlainTextEdit(QTextEdit):
    def appendPlainText(self, text):
        self.append(text)


class _Ranged(QWidget):
    _signals = ("valueChanged",)
    _type = float

    def __init__(self, parent=None):
        super().__init__(parent)
        self._value = self._type(0)
        self.minimum = self._type(0)
        self.maximum = self._type(99)
        self.singleStep = self._type(1)
        self.decimals = 2

    @property
    def value(self):
        return self._value

    @value.setter
    def value(self, value):
        value = self._type(min(max(value, self.minimum), self.maximum))
        if value != self._value:
            self._value = value
            self.valueChanged.emit(value)

    def setValue(self, value):
        self.value = value

    def setRange(self, minimum, maximum):
        self.minimum, self.maximum = self._type(minimum), self._type(maximum)
        self.value = self._value

    def setMinimum(self, value):
        self.minimum = self._type(value)

    def setMaximum(self, value):
        self.maximum = self._type(value)


class QSpinBox(_Ranged):
    _type = int


class QSlider(_Ranged):
    _type = int


class QDoubleSpinBox(_Ranged):
    _type = float


class QProgressBar(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.value = 0
        self.minimum, self.maximum = 0, 100
        self.format = "%p%"


class QTableView(QWidget):
    pass


class QSpacerItem:
    pass


class QTimer(QObject):
    _signals = ("timeout",)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.interval = 0
        self.singleShot_ = False
        self._active = False

    def setInterval(self, ms):
        self.interval = ms

    def setSingleShot(self, value):
        self.singleShot_ = value

    def start(self, ms=None):
        self._active = True

    def stop(self):
        self._active = False

    def isActive(self):
        return self._active

    @staticmethod
    def singleShot(ms, slot):
        slot()


class QSettings:
    def __init__(self, *args):
        self._values = {}

    def value(self, key, default=None):
        return self._values.get(key, default)

    def setValue(self, key, value):
        self._values[key] = value

    def contains(self, key):
        return key in self._values


class QFileDialog:
    #: what getExistingDirectory returns next (a test sets it; "" = the user cancelled)
    next_directory = ""
    calls = []

    @staticmethod
    def getExistingDirectory(*args):
        QFileDialog.calls.append(args)
        return QFileDialog.next_directory


class QMessageBox:
    Ok, Cancel, Yes, No = 1024, 4194304, 16384, 65536


class QApplication:
    @staticmethod
    def processEvents():
        pass


class QFile:
    ReadOnly = 1

    def __init__(self, path):
        self.path = str(path)

    def exists(self):
        import os

        return os.path.isfile(self.path)

    def open(self, mode):
        return True

    def close(self):
        pass


class QUiLoader:
    """Builds stand-in widgets from a Qt Designer .ui file (classes looked up in qt, ctk and slicer)."""

    def load(self, qfile, parent=None):
        tree = ET.parse(qfile.path)
        top = tree.getroot().find("widget")
        return _build_widget(top, parent)


def _widget_class(name):
    import sys

    for module_name in ("qt", "ctk", "slicer"):
        module = sys.modules.get(module_name)
        klass = getattr(module, name, None) if module is not None else None
        if isinstance(klass, type):
            return klass
    raise RuntimeError(f"the qt stand-in has no widget class {name!r} (add it to Testing/slicer_standins)")


def _property_value(element):
    child = next(iter(element))
    tag = child.tag
    if tag in ("string", "cstring", "enum", "set"):
        return child.text or ""
    if tag == "bool":
        return (child.text or "").strip() == "true"
    if tag == "number":
        return int(child.text)
    if tag == "double":
        return float(child.text)
    if tag == "stringlist":
        return [s.text or "" for s in child.findall("string")]
    return None


def _build_widget(element, parent):
    widget = _widget_class(element.get("class"))(parent) if parent is not None else _widget_class(element.get("class"))()
    widget.setObjectName(element.get("name") or "")
    for item in element:
        if item.tag == "property":
            value = _property_value(item)
            if item.get("stdset") == "0":
                widget.setProperty(item.get("name"), value)
            else:
                setattr(widget, item.get("name"), value)
        elif item.tag == "item" and isinstance(widget, QComboBox):
            text = item.find("property/string")
            widget.addItem(text.text if text is not None else "")
        elif item.tag == "layout":
            _build_layout(item, widget)
        elif item.tag == "widget":
            _build_widget(item, widget)
    return widget


def _build_layout(element, widget):
    layout = _widget_class(element.get("class"))()
    layout.setObjectName(element.get("name") or "")
    widget.setLayout(layout)
    for item in element.findall("item"):
        for child in item:
            if child.tag == "widget":
                layout.addWidget(_build_widget(child, widget))
            elif child.tag == "layout":
                inner = QWidget(widget)  # a nested layout's widgets are the same widget's children
                _build_layout(child, inner)
    return layout


class QIcon:
    def __init__(self, path=""):
        self.path = str(path)


class QPixmap(QIcon):
    pass
