"""Stand-ins for the Qt MRML widget classes Slicer puts on the ``slicer`` module (slicer-core has MRML but no Qt)."""
from __future__ import annotations

from qt import QDoubleSpinBox, QTableView, QWidget


class qMRMLWidget(QWidget):
    _signals = ("mrmlSceneChanged",)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene = None

    def setMRMLScene(self, scene):
        """Also sets it on every MRML child, as the .ui's mrmlSceneChanged → setMRMLScene connections do."""
        self._scene = scene
        self.mrmlSceneChanged.emit(scene)
        for child in self.findChildren(QWidget):
            if child is not self and hasattr(child, "_scene"):
                child._scene = scene

    def mrmlScene(self):
        return self._scene


class qMRMLNodeComboBox(qMRMLWidget):
    _signals = ("currentNodeChanged", "currentNodeIDChanged", "nodeAdded", "nodeActivated")

    def __init__(self, parent=None):
        super().__init__(parent)
        self.nodeTypes = []
        self.noneEnabled = False
        self.addEnabled = False
        self.removeEnabled = False
        self.renameEnabled = False
        self.showChildNodeTypes = True
        self.baseName = ""
        self.noneDisplay = ""
        self._node = None

    def currentNode(self):
        return self._node

    def currentNodeID(self):
        return self._node.GetID() if self._node is not None else ""

    def setCurrentNode(self, node):
        if node is not self._node:
            self._node = node
            self.currentNodeChanged.emit(node)
            self.currentNodeIDChanged.emit(self.currentNodeID())

    def setCurrentNodeID(self, node_id):
        self.setCurrentNode(self._scene.GetNodeByID(node_id) if node_id else None)


class qMRMLSegmentSelectorWidget(qMRMLWidget):
    _signals = ("currentNodeChanged", "currentSegmentChanged")

    def __init__(self, parent=None):
        super().__init__(parent)
        self._node = None
        self._segment = ""

    def currentNode(self):
        return self._node

    def setCurrentNode(self, node):
        self._node = node
        self.currentNodeChanged.emit(node)

    def currentSegmentID(self):
        return self._segment

    def setCurrentSegmentID(self, segment_id):
        self._segment = segment_id
        self.currentSegmentChanged.emit(segment_id)


class qMRMLTableView(QTableView):
    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene = None
        self.tableNode = None

    def setMRMLScene(self, scene):
        self._scene = scene

    def setMRMLTableNode(self, node):
        self.tableNode = node

    def mrmlTableNode(self):
        return self.tableNode


class qMRMLSliderWidget(QDoubleSpinBox):
    pass


class qMRMLSpinBox(QDoubleSpinBox):
    pass


class qMRMLRangeWidget(QWidget):
    pass


class qMRMLSubjectHierarchyTreeView(qMRMLWidget):
    pass
