"""Render the Media2DICOM panel from its .ui file without 3D Slicer.

Loads ``Resources/UI/Media2DICOM.ui`` with PySide6 on Qt's offscreen platform
and saves a PNG of it, so the layout can be reviewed and shown in the README
on machines without Slicer. Slicer's own widgets are replaced by the Qt
classes they build on: collapsible sections become group boxes, node
selectors become combo boxes and the path editor becomes a line edit. The
lists are filled with example rows so the picture shows a panel in use.

Usage: ``python Testing/Python/panel_screenshot.py [OUTPUT.png]``
(needs ``pip install PySide6-Essentials``).
"""

from __future__ import annotations

import argparse
import os
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
UI_FILE = REPOSITORY / "Resources" / "UI" / "Media2DICOM.ui"
DEFAULT_OUTPUT = REPOSITORY / "Resources" / "Screenshots" / "Media2DICOM-panel.png"

# Slicer and CTK widget classes and the Qt class each one is drawn as.
QT_STAND_INS = {
    "ctkCollapsibleButton": "QGroupBox",
    "ctkPathLineEdit": "QLineEdit",
    "qMRMLNodeComboBox": "QComboBox",
    "qMRMLWidget": "QWidget",
}

# Properties of the stand-in classes that Qt does not have.
SLICER_ONLY_PROPERTIES = {
    "nodeTypes",
    "showChildNodeTypes",
    "addEnabled",
    "removeEnabled",
    "renameEnabled",
    "noneEnabled",
    "collapsed",
    "filters",
}

EXAMPLE_SEGMENTS = [
    ("liver", (221, 130, 101), 1.0, True),
    ("spine", (241, 214, 145), 1.0, True),
    ("heart", (206, 110, 84), 0.6, False),
]


def qt_compatible_ui(ui_path: Path) -> bytes:
    """Return the .ui XML with Slicer's widgets replaced by their Qt stand-ins."""
    tree = ElementTree.parse(ui_path)
    root = tree.getroot()
    for widget in root.iter("widget"):
        original = widget.get("class")
        if original not in QT_STAND_INS:
            continue
        widget.set("class", QT_STAND_INS[original])
        for prop in list(widget.findall("property")):
            name = prop.get("name")
            if name in SLICER_ONLY_PROPERTIES:
                widget.remove(prop)
            elif original == "ctkCollapsibleButton" and name == "text":
                prop.set("name", "title")

    # The stand-ins are plain Qt classes, so the custom widget declarations and
    # the scene connections, whose signals Qt does not have, are removed.
    for tag in ("customwidgets", "connections"):
        element = root.find(tag)
        if element is not None:
            root.remove(element)
    return ElementTree.tostring(root, encoding="utf-8")


def fill_examples(panel) -> None:
    """Fill the panel's lists and labels with example content."""
    from PySide6 import QtCore, QtGui, QtWidgets

    def child(kind, name):
        widget = panel.findChild(kind, name)
        if widget is None:
            raise LookupError(f"{UI_FILE} has no {kind.__name__} named {name}")
        return widget

    child(QtWidgets.QComboBox, "sourceVolumeSelector").addItem("2: CT abdomen")
    child(QtWidgets.QLabel, "patientValueLabel").setText("ANON^PATIENT (99000)")
    child(QtWidgets.QLabel, "studyDateValueLabel").setText("2004-09-07")
    child(QtWidgets.QLabel, "modalityValueLabel").setText("CT")
    child(QtWidgets.QLabel, "sourceStatusLabel").setText(
        "Source: 3 instances of series 2 from the DICOM database."
    )
    child(QtWidgets.QComboBox, "segmentationSelector").addItem("Segmentation")

    table = child(QtWidgets.QTableWidget, "segmentsTable")
    table.setRowCount(len(EXAMPLE_SEGMENTS))
    for row, (name, color, opacity, checked) in enumerate(EXAMPLE_SEGMENTS):
        name_item = QtWidgets.QTableWidgetItem(name)
        name_item.setCheckState(QtCore.Qt.Checked if checked else QtCore.Qt.Unchecked)
        table.setItem(row, 0, name_item)
        color_item = QtWidgets.QTableWidgetItem("")
        color_item.setBackground(QtGui.QColor(*color))
        table.setItem(row, 1, color_item)
        table.setItem(row, 2, QtWidgets.QTableWidgetItem(f"{opacity:.2f}"))
    table.horizontalHeader().setStretchLastSection(True)
    table.setMaximumHeight(120)

    models = child(QtWidgets.QListWidget, "modelsList")
    item = QtWidgets.QListWidgetItem("Implant guide")
    item.setCheckState(QtCore.Qt.Unchecked)
    models.addItem(item)
    models.setMaximumHeight(48)
    for name in ("stlFilesList", "mediaFilesList"):
        child(QtWidgets.QListWidget, name).setMaximumHeight(48)
    child(QtWidgets.QListWidget, "mediaFilesList").addItem("endoscopy.mp4")

    child(QtWidgets.QComboBox, "screenshotViewComboBox").addItem("Whole layout")
    child(QtWidgets.QCheckBox, "screenshotCheckBox").setChecked(True)
    child(QtWidgets.QComboBox, "cineViewComboBox").addItem("View1 (3D)")
    child(QtWidgets.QComboBox, "cineModeComboBox").setCurrentIndex(1)
    child(QtWidgets.QComboBox, "serverComboBox").addItem("PACS (ORTHANC at pacs:104)")
    child(QtWidgets.QComboBox, "queryServerComboBox").addItem("PACS")
    child(QtWidgets.QLineEdit, "outputFolderPathLineEdit").setText(
        "/home/user/Media2DICOM"
    )
    child(QtWidgets.QPushButton, "sendButton").setEnabled(True)
    child(QtWidgets.QListWidget, "resultsList").setMaximumHeight(60)
    child(QtWidgets.QGroupBox, "queryCollapsibleButton").setVisible(False)


def render_panel(output: Path, width: int = 420) -> Path:
    """Load the .ui offscreen, fill it with examples and save a PNG."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6 import QtCore, QtUiTools, QtWidgets

    application = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    buffer = QtCore.QBuffer()
    buffer.setData(QtCore.QByteArray(qt_compatible_ui(UI_FILE)))
    buffer.open(QtCore.QIODevice.ReadOnly)
    panel = QtUiTools.QUiLoader().load(buffer)
    if panel is None:
        raise RuntimeError(f"Qt could not load {UI_FILE}")

    fill_examples(panel)
    panel.resize(width, panel.sizeHint().height())
    panel.show()
    application.processEvents()
    output.parent.mkdir(parents=True, exist_ok=True)
    if not panel.grab().save(str(output)):
        raise RuntimeError(f"Failed to save the panel picture to {output}")
    panel.close()
    return output


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "output",
        nargs="?",
        type=Path,
        default=DEFAULT_OUTPUT,
        help=f"PNG file to write (default: {DEFAULT_OUTPUT.relative_to(REPOSITORY)})",
    )
    args = parser.parse_args(argv)
    print(render_panel(args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
