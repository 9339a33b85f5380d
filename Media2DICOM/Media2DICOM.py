"""Media2DICOM: send segments, models, screenshots and cine from 3D Slicer as DICOM.

The module gathers what is in the scene: segment surfaces, model nodes,
captured views and files from disk. The ``Media2DICOMLib`` library writes them
as Encapsulated STL and Secondary Capture objects into the study of the loaded
DICOM volume and sends them to a PACS.

Scripting from the Python console goes through :class:`Media2DICOMLogic`,
whose export methods take every option as an argument.

NOTE: written against the Slicer 5.10 and 5.12 sources, but no Slicer ran
where it was written, so the panel and Media2DICOMTest have not been executed.
"""

import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import qt
import vtk

import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin


def _addLibraryToPath():
    """Make ``import Media2DICOMLib`` work in a built extension and a source checkout.

    A built extension installs Media2DICOMLib beside this file, and Slicer puts
    this folder on ``sys.path``. When Slicer loads the module from a source
    checkout, the library is one folder up, at the top of the repository.
    """
    moduleDir = os.path.dirname(os.path.abspath(__file__))
    for folder in (moduleDir, os.path.dirname(moduleDir)):
        if os.path.isfile(os.path.join(folder, "Media2DICOMLib", "__init__.py")):
            if folder not in sys.path:
                sys.path.insert(0, folder)
            return


_addLibraryToPath()

from Media2DICOMLib import slicer_support  # noqa: E402
from Media2DICOMLib.errors import Media2DICOMError  # noqa: E402
from Media2DICOMLib.progress import Cancelled  # noqa: E402

MODULE_DIR = Path(__file__).resolve().parent

CINE_SLICE_SWEEP = "Slice sweep"
CINE_3D_ROTATION = "3D rotation"
CINE_SEQUENCE = "Sequence"
CINE_MODES = (CINE_SLICE_SWEEP, CINE_3D_ROTATION, CINE_SEQUENCE)

LOCAL_FOLDER_ONLY = "Local folder only"
WHOLE_LAYOUT = "Whole layout"

STL_HEADER = "Media2DICOM export from 3D Slicer. SPACE=LPS"

# PythonQt's thread support is off unless the application turns it on with
# PythonQt::setEnableThreadSupport, which Slicer 5.10 and 5.12 do not call. So the
# main thread keeps the GIL while Qt waits for events, and a Python worker thread
# runs only while the main thread runs Python. Each poll of a network task
# therefore sleeps for a while to hand the GIL to the worker.
# NOTE: These lengths are estimates that were not measured in Slicer. In a plain
# Python simulation whose main thread held the GIL in C between 50 ms polls, a
# 3 MB C-STORE to a local pynetdicom SCP took 1.0 s without the sleep, 0.2 s with.
WORKER_POLL_INTERVAL_MS = 50
WORKER_SLICE_SECONDS = 0.025


#
# Media2DICOM
#


class Media2DICOM(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Media2DICOM"
        self.parent.categories = ["DICOM"]
        self.parent.dependencies = ["DICOM", "Segmentations", "ScreenCapture"]
        self.parent.contributors = ["Media2DICOM developers"]
        self.parent.helpText = (
            "Send segments, models, screenshots, cine captures and image or video "
            "files as DICOM objects in the study of a loaded DICOM volume: 3D "
            "models as Encapsulated STL, captures as Secondary Capture. Pick the "
            "source volume, tick the content, choose a server and press Send."
        )
        self.parent.acknowledgementText = (
            "Media2DICOM writes DICOM with pydicom and sends it with pynetdicom."
        )

        # The base class looks for the icon beside this file, which a source
        # checkout does not have, because Resources/ is at the repository top.
        try:
            iconPath = slicer_support.find_resource(MODULE_DIR, "Icons/Media2DICOM.png")
            self.parent.icon = qt.QIcon(str(iconPath))
        except FileNotFoundError:
            logging.warning("Media2DICOM module icon not found")


#
# Export content
#


@dataclass
class ExportContent:
    """Content of one export, gathered from the panel or from a script.

    Colours are sRGB with components 0-1 and opacities 0-1, keyed by segment
    ID. Segments without an entry use the segmentation's own values.
    """

    segmentationNode: object = None
    segmentIds: List[str] = field(default_factory=list)
    segmentColors: dict = field(default_factory=dict)
    segmentOpacities: dict = field(default_factory=dict)
    modelNodes: list = field(default_factory=list)
    stlFiles: List[str] = field(default_factory=list)
    screenshot: bool = False
    screenshotViewNode: object = None
    cineMode: Optional[str] = None
    cineViewNode: object = None
    cineSequenceBrowserNode: object = None
    cineFrames: int = 36
    cineFramesPerSecond: float = 10.0
    mediaFiles: List[str] = field(default_factory=list)

    def hasModels(self) -> bool:
        return bool(self.segmentIds or self.modelNodes or self.stlFiles)

    def hasVideo(self) -> bool:
        return slicer_support.has_video(self.mediaFiles)

    def isEmpty(self) -> bool:
        return not (
            self.hasModels() or self.screenshot or self.cineMode or self.mediaFiles
        )


#
# Media2DICOMWidget
#


class Media2DICOMWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: source study, content, destination and send."""

    def __init__(self, parent=None):
        # The base class calls setup() at once when there is no parent, so the
        # attributes and the observer list must exist before it runs.
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.ui = None
        self.sourceFiles = []
        self.querySource = None
        self.foundSeries = []
        self.exportProgress = None
        self.sendTask = None
        self.sendTimer = None
        self.backgroundTasks = []
        self.views = []
        self.editedSegmentColors = {}
        self.editedSegmentOpacities = {}
        self.pendingRefreshes = []
        ScriptedLoadableModuleWidget.__init__(self, parent)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiPath = slicer_support.find_resource(MODULE_DIR, "UI/Media2DICOM.ui")
        uiWidget = slicer.util.loadUI(str(uiPath))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = Media2DICOMLogic()

        self.ui.segmentsTable.setColumnCount(3)
        self.ui.segmentsTable.horizontalHeader().setStretchLastSection(True)
        self.ui.querySeriesTable.horizontalHeader().setStretchLastSection(True)

        self.ui.sourceVolumeSelector.connect(
            "currentNodeChanged(vtkMRMLNode*)", self.onSourceVolumeChanged
        )
        self.ui.queryButton.connect("clicked(bool)", self.onQuery)
        self.ui.useQueryResultButton.connect("clicked(bool)", self.onUseQueryResult)
        self.ui.segmentationSelector.connect(
            "currentNodeChanged(vtkMRMLNode*)", self.onSegmentationChanged
        )
        self.ui.segmentsTable.connect("cellDoubleClicked(int,int)", self.onSegmentCell)
        self.ui.selectAllSegmentsButton.connect(
            "clicked(bool)", lambda checked: self.setAllSegmentsChecked(True)
        )
        self.ui.selectNoSegmentsButton.connect(
            "clicked(bool)", lambda checked: self.setAllSegmentsChecked(False)
        )
        self.ui.addStlFilesButton.connect("clicked(bool)", self.onAddStlFiles)
        self.ui.removeStlFilesButton.connect(
            "clicked(bool)", lambda checked: self.removeSelected(self.ui.stlFilesList)
        )
        self.ui.addMediaFilesButton.connect("clicked(bool)", self.onAddMediaFiles)
        self.ui.removeMediaFilesButton.connect(
            "clicked(bool)", lambda checked: self.removeSelected(self.ui.mediaFilesList)
        )
        self.ui.cineModeComboBox.connect("currentIndexChanged(int)", self.onCineMode)
        self.ui.addServerButton.connect("clicked(bool)", self.onAddServer)
        self.ui.editServerButton.connect("clicked(bool)", self.onEditServer)
        self.ui.echoServerButton.connect("clicked(bool)", self.onEchoServer)
        self.ui.serverComboBox.connect("currentIndexChanged(int)", self.updateButtons)
        self.ui.sendButton.connect("clicked(bool)", self.onSend)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)

        self.addObserver(
            slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.onSceneChanged
        )
        self.addObserver(
            slicer.mrmlScene, slicer.mrmlScene.NodeRemovedEvent, self.onSceneChanged
        )
        self.addObserver(
            slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneChanged
        )

        self.refreshServers()
        self.refreshModels()
        self.onCineMode()
        self.onSourceVolumeChanged(self.ui.sourceVolumeSelector.currentNode())

    def cleanup(self):
        self.removeObservers()
        if self.sendTask is not None:
            self.sendTask.cancel()
        if self.sendTimer is not None:
            self.sendTimer.stop()
        # Stop polling query, retrieve and echo tasks, so no timer calls into
        # a panel that a module reload has replaced.
        for task, timer in self.backgroundTasks:
            task.cancel()
            timer.stop()
        self.backgroundTasks = []

    def enter(self):
        # The view lists need the layout manager, which setup() must not touch,
        # because the generic module test runs without a main window.
        self.refreshViews()
        self.refreshModels()

    # Source

    def onSourceVolumeChanged(self, volumeNode):
        self.querySource = None
        self.sourceFiles = []
        if volumeNode is None:
            self.showSource(None, "Select a volume loaded from DICOM.")
            self.updateButtons()
            return
        try:
            self.sourceFiles = self.logic.sourceFilesForVolume(volumeNode)
            summary = self.logic.sourceSummary(volumeNode)
        except Media2DICOMError as exc:
            self.showSource(None, str(exc))
        else:
            self.showSource(
                summary,
                f"Source: {len(self.sourceFiles)} instance(s) of the volume's series "
                "from the DICOM database.",
            )
        self.updateButtons()

    def showSource(self, summary, status):
        summary = summary or {}
        patient = summary.get("PatientName", "")
        if summary.get("PatientID"):
            patient = f"{patient} ({summary['PatientID']})"
        self.ui.patientValueLabel.text = patient or "-"
        self.ui.studyDateValueLabel.text = summary.get("StudyDate") or "-"
        self.ui.modalityValueLabel.text = summary.get("Modality") or "-"
        self.ui.accessionLineEdit.text = summary.get("AccessionNumber", "")
        self.ui.sourceStatusLabel.text = status

    def onQuery(self):
        serverName = self.ui.queryServerComboBox.currentText
        if not serverName:
            self.showError(
                "Add a server first, because the query searches saved servers."
            )
            return
        patientId = self.ui.queryPatientIdLineEdit.text.strip()
        accession = self.ui.queryAccessionLineEdit.text.strip()
        if not self.ensureNetworkPackages():
            return
        self.ui.sourceStatusLabel.text = f"Searching {serverName}..."
        self.runInBackground(
            "query",
            self.logic.querySeries,
            (serverName, patientId, accession),
            self.onQueryDone,
        )

    def onQueryDone(self, task):
        if task.error is not None:
            self.ui.sourceStatusLabel.text = f"Query failed: {task.error}"
            return
        self.foundSeries = task.result or []
        table = self.ui.querySeriesTable
        table.setRowCount(len(self.foundSeries))
        for row, series in enumerate(self.foundSeries):
            for column, keyword in enumerate(slicer_support.QUERY_COLUMNS):
                table.setItem(row, column, qt.QTableWidgetItem(series.get(keyword, "")))
        self.ui.sourceStatusLabel.text = f"{len(self.foundSeries)} series found."

    def onUseQueryResult(self):
        row = self.ui.querySeriesTable.currentRow()
        if row < 0 or row >= len(self.foundSeries):
            self.showError("Select a series in the search results first.")
            return
        serverName = self.ui.queryServerComboBox.currentText
        self.ui.sourceStatusLabel.text = "Retrieving the source header..."
        self.runInBackground(
            "retrieve",
            self.logic.retrieveSource,
            (serverName, self.foundSeries[row]),
            self.onRetrieveDone,
        )

    def onRetrieveDone(self, task):
        if task.error is not None:
            self.ui.sourceStatusLabel.text = f"Retrieval failed: {task.error}"
            return
        self.querySource = task.result
        self.sourceFiles = []
        header = self.querySource.header
        self.showSource(
            {
                keyword: str(header.get(keyword, "") or "")
                for keyword in (
                    "PatientName",
                    "PatientID",
                    "StudyDate",
                    "AccessionNumber",
                    "Modality",
                )
            },
            f"Source: series {self.querySource.series_instance_uid} from the server.",
        )
        self.updateButtons()

    # Content

    def onSegmentationChanged(self, segmentationNode):
        # Colour and opacity edits belong to one segmentation's segment IDs.
        self.editedSegmentColors = {}
        self.editedSegmentOpacities = {}
        self.removeObservers(self.onSegmentsChanged)
        if segmentationNode is not None:
            segmentation = segmentationNode.GetSegmentation()
            for event in (
                slicer.vtkSegmentation.SegmentAdded,
                slicer.vtkSegmentation.SegmentRemoved,
                slicer.vtkSegmentation.SegmentModified,
            ):
                self.addObserver(segmentation, event, self.onSegmentsChanged)
        self.refreshSegments()

    def onSegmentsChanged(self, caller=None, event=None):
        self.scheduleRefresh(self.refreshSegments)

    def refreshSegments(self):
        """Rebuild the segment table, keeping ticks and the user's edits."""
        table = self.ui.segmentsTable
        unticked = {
            table.item(row, 0).data(qt.Qt.UserRole)
            for row in range(table.rowCount)
            if table.item(row, 0).checkState() != qt.Qt.Checked
        }
        table.setRowCount(0)
        segmentationNode = self.ui.segmentationSelector.currentNode()
        if segmentationNode is None:
            return
        segmentation = segmentationNode.GetSegmentation()
        segmentationDisplayNode = segmentationNode.GetDisplayNode()
        table.setRowCount(segmentation.GetNumberOfSegments())
        for row in range(segmentation.GetNumberOfSegments()):
            segmentId = segmentation.GetNthSegmentID(row)
            segment = segmentation.GetSegment(segmentId)
            nameItem = qt.QTableWidgetItem(segment.GetName())
            nameItem.setData(qt.Qt.UserRole, segmentId)
            nameItem.setFlags(qt.Qt.ItemIsEnabled | qt.Qt.ItemIsUserCheckable)
            nameItem.setCheckState(
                qt.Qt.Unchecked if segmentId in unticked else qt.Qt.Checked
            )
            table.setItem(row, 0, nameItem)

            color = self.editedSegmentColors.get(segmentId, list(segment.GetColor()))
            colorItem = qt.QTableWidgetItem("")
            colorItem.setFlags(qt.Qt.ItemIsEnabled)
            colorItem.setData(qt.Qt.UserRole, color)
            colorItem.setBackground(qt.QBrush(self.qColor(color)))
            colorItem.setToolTip("Double-click to change the exported colour.")
            table.setItem(row, 1, colorItem)

            opacity = 1.0
            if segmentationDisplayNode is not None:
                opacity = segmentationDisplayNode.GetSegmentOpacity3D(segmentId)
            opacity = self.editedSegmentOpacities.get(segmentId, opacity)
            opacitySpinBox = qt.QDoubleSpinBox()
            opacitySpinBox.setRange(0.0, 1.0)
            opacitySpinBox.setSingleStep(0.05)
            opacitySpinBox.setDecimals(2)
            opacitySpinBox.setValue(opacity)
            opacitySpinBox.connect(
                "valueChanged(double)",
                lambda value, segmentId=segmentId: self.editedSegmentOpacities.update(
                    {segmentId: value}
                ),
            )
            table.setCellWidget(row, 2, opacitySpinBox)

    def onSegmentCell(self, row, column):
        if column != 1:
            return
        item = self.ui.segmentsTable.item(row, 1)
        color = qt.QColorDialog.getColor(self.qColor(item.data(qt.Qt.UserRole)))
        if color.isValid():
            rgb = [color.redF(), color.greenF(), color.blueF()]
            item.setData(qt.Qt.UserRole, rgb)
            item.setBackground(qt.QBrush(color))
            segmentId = self.ui.segmentsTable.item(row, 0).data(qt.Qt.UserRole)
            self.editedSegmentColors[segmentId] = rgb

    def setAllSegmentsChecked(self, checked):
        state = qt.Qt.Checked if checked else qt.Qt.Unchecked
        for row in range(self.ui.segmentsTable.rowCount):
            self.ui.segmentsTable.item(row, 0).setCheckState(state)

    def onSceneChanged(self, caller=None, event=None):
        self.scheduleRefresh(self.refreshModels)

    def scheduleRefresh(self, refresh):
        """Run ``refresh`` once after the pending events, however many asked for it.

        Painting a segment or loading a scene sends an event per change, and
        rebuilding a list for each would slow Slicer down.
        """
        if refresh in self.pendingRefreshes:
            return
        self.pendingRefreshes.append(refresh)

        def run():
            self.pendingRefreshes.remove(refresh)
            refresh()

        qt.QTimer.singleShot(0, run)

    def refreshModels(self):
        if self.ui is None:
            return
        checked = {
            self.ui.modelsList.item(i).data(qt.Qt.UserRole)
            for i in range(self.ui.modelsList.count)
            if self.ui.modelsList.item(i).checkState() == qt.Qt.Checked
        }
        self.ui.modelsList.clear()
        for modelNode in slicer.util.getNodesByClass("vtkMRMLModelNode"):
            if modelNode.GetHideFromEditors() or modelNode.GetPolyData() is None:
                continue
            item = qt.QListWidgetItem(modelNode.GetName())
            item.setData(qt.Qt.UserRole, modelNode.GetID())
            item.setFlags(qt.Qt.ItemIsEnabled | qt.Qt.ItemIsUserCheckable)
            item.setCheckState(
                qt.Qt.Checked if modelNode.GetID() in checked else qt.Qt.Unchecked
            )
            self.ui.modelsList.addItem(item)

    def refreshViews(self):
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:
            return
        views = [(WHOLE_LAYOUT, None)]
        for name in layoutManager.sliceViewNames():
            views.append(
                (f"{name} (slice)", layoutManager.sliceWidget(name).mrmlSliceNode())
            )
        for index in range(layoutManager.threeDViewCount):
            viewNode = layoutManager.threeDWidget(index).mrmlViewNode()
            views.append((f"{viewNode.GetName()} (3D)", viewNode))
        self.views = views
        for comboBox in (self.ui.screenshotViewComboBox, self.ui.cineViewComboBox):
            current = comboBox.currentText
            comboBox.clear()
            for name, _ in views:
                comboBox.addItem(name)
            index = comboBox.findText(current)
            comboBox.setCurrentIndex(max(index, 0))

    def viewNodeForComboBox(self, comboBox):
        for name, viewNode in self.views:
            if name == comboBox.currentText:
                return viewNode
        return None

    def onCineMode(self, index=None):
        mode = self.ui.cineModeComboBox.currentText
        self.ui.cineSequenceSelector.enabled = mode == CINE_SEQUENCE

    def onAddStlFiles(self):
        paths = qt.QFileDialog.getOpenFileNames(
            slicer.util.mainWindow(), "Add STL files", "", "STL files (*.stl *.STL)"
        )
        for path in paths:
            self.ui.stlFilesList.addItem(path)
        self.updateButtons()

    def onAddMediaFiles(self):
        suffixes = " ".join(
            f"*{suffix}"
            for suffix in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
        )
        videos = " ".join(f"*{suffix}" for suffix in slicer_support.VIDEO_SUFFIXES)
        paths = qt.QFileDialog.getOpenFileNames(
            slicer.util.mainWindow(),
            "Add images or videos",
            "",
            f"Images and videos ({suffixes} {videos})",
        )
        for path in paths:
            self.ui.mediaFilesList.addItem(path)
        self.updateButtons()

    def removeSelected(self, listWidget):
        for item in listWidget.selectedItems():
            listWidget.takeItem(listWidget.row(item))
        self.updateButtons()

    def gatherContent(self):
        """Build an :class:`ExportContent` from the panel's checked items."""
        content = ExportContent()
        table = self.ui.segmentsTable
        content.segmentationNode = self.ui.segmentationSelector.currentNode()
        for row in range(table.rowCount):
            nameItem = table.item(row, 0)
            if nameItem.checkState() != qt.Qt.Checked:
                continue
            segmentId = nameItem.data(qt.Qt.UserRole)
            content.segmentIds.append(segmentId)
            content.segmentColors[segmentId] = list(
                table.item(row, 1).data(qt.Qt.UserRole)
            )
            content.segmentOpacities[segmentId] = table.cellWidget(row, 2).value

        for index in range(self.ui.modelsList.count):
            item = self.ui.modelsList.item(index)
            if item.checkState() == qt.Qt.Checked:
                modelNode = slicer.mrmlScene.GetNodeByID(item.data(qt.Qt.UserRole))
                if modelNode is not None:
                    content.modelNodes.append(modelNode)
        content.stlFiles = [
            self.ui.stlFilesList.item(i).text()
            for i in range(self.ui.stlFilesList.count)
        ]

        content.screenshot = self.ui.screenshotCheckBox.checked
        content.screenshotViewNode = self.viewNodeForComboBox(
            self.ui.screenshotViewComboBox
        )
        if self.ui.cineCheckBox.checked:
            content.cineMode = self.ui.cineModeComboBox.currentText
            content.cineViewNode = self.viewNodeForComboBox(self.ui.cineViewComboBox)
            content.cineSequenceBrowserNode = self.ui.cineSequenceSelector.currentNode()
            content.cineFrames = self.ui.cineFramesSpinBox.value
            content.cineFramesPerSecond = self.ui.cineRateSpinBox.value

        content.mediaFiles = [
            self.ui.mediaFilesList.item(i).text()
            for i in range(self.ui.mediaFilesList.count)
        ]
        return content

    # Destination

    def refreshServers(self, selectName=None):
        try:
            names = self.logic.serverNames()
        except Media2DICOMError as exc:
            names = []
            self.ui.statusLabel.text = str(exc)
        current = selectName or self.ui.serverComboBox.currentText
        self.ui.serverComboBox.clear()
        self.ui.serverComboBox.addItem(LOCAL_FOLDER_ONLY)
        self.ui.queryServerComboBox.clear()
        for name in names:
            self.ui.serverComboBox.addItem(name)
            self.ui.queryServerComboBox.addItem(name)
        index = self.ui.serverComboBox.findText(current)
        self.ui.serverComboBox.setCurrentIndex(max(index, 0))
        self.updateButtons()

    def selectedServerName(self):
        name = self.ui.serverComboBox.currentText
        return None if name in ("", LOCAL_FOLDER_ONLY) else name

    def onAddServer(self):
        self.editServer(None)

    def onEditServer(self):
        name = self.selectedServerName()
        if name is None:
            self.showError("Select a server to edit.")
            return
        self.editServer(name)

    def editServer(self, name):
        """Show the server form, then save the server and check it with C-ECHO."""
        values = self.logic.serverValues(name) if name else {}
        dialog = ServerDialog(values, slicer.util.mainWindow())
        if not dialog.exec_():
            return
        try:
            saved = self.logic.saveServer(name, dialog.values())
        except Media2DICOMError as exc:
            self.showError(str(exc))
            return
        self.refreshServers(selectName=saved)
        self.onEchoServer()

    def onEchoServer(self):
        name = self.selectedServerName()
        if name is None:
            self.showError("Select a server to check.")
            return
        if not self.ensureNetworkPackages():
            return
        self.ui.statusLabel.text = f"Checking {name} with C-ECHO..."
        self.runInBackground("echo", self.logic.echoServer, (name,), self.onEchoDone)

    def onEchoDone(self, task):
        if task.error is not None:
            self.ui.statusLabel.text = f"C-ECHO failed: {task.error}"
            return
        result = task.result
        if result.ok:
            self.ui.statusLabel.text = f"C-ECHO succeeded in {result.seconds:.2f} s."
        else:
            self.ui.statusLabel.text = f"C-ECHO failed: {result.reason}"

    # Send

    def updateButtons(self, *unused):
        if self.ui is None:
            return
        hasSource = bool(self.sourceFiles) or self.querySource is not None
        busy = self.exportProgress is not None or self.sendTask is not None
        self.ui.sendButton.enabled = hasSource and not busy
        self.ui.cancelButton.enabled = busy
        self.ui.editServerButton.enabled = self.selectedServerName() is not None
        self.ui.echoServerButton.enabled = self.selectedServerName() is not None

    def onSend(self):
        content = self.gatherContent()
        if content.isEmpty():
            self.showError(
                "Tick at least one segment, model, file, screenshot or cine."
            )
            return
        serverName = self.selectedServerName()
        self.ui.resultsList.clear()
        try:
            self.logic.ensurePackages(
                send=serverName is not None, video=content.hasVideo()
            )
        except Media2DICOMError as exc:
            self.showError(str(exc))
            return

        self.exportProgress = slicer_support.CancellableProgress(self.onExportProgress)
        self.ui.progressBar.visible = True
        self.updateButtons()
        try:
            result, failure = self.writeForSend(content)
        finally:
            self.exportProgress = None
        if result is None:
            self.finishSend(failure)
            return

        if serverName is None:
            self.finishSend(f"Written to {result.output_folder}.")
            return
        self.startSend(serverName, result.files)

    def writeForSend(self, content):
        """Write the content in the GUI thread, processing events between steps.

        Returns the written export and None, or None and the status line of a
        cancelled or failed export, whose error was already shown.
        """
        try:
            result = self.logic.writeObjects(
                self.currentSource(),
                content,
                outputFolder=self.ui.outputFolderPathLineEdit.currentPath or None,
                firstSeriesNumber=self.ui.seriesNumberSpinBox.value,
                seriesDescription=self.ui.seriesDescriptionLineEdit.text.strip()
                or None,
                colorText=self.ui.colorTextCheckBox.checked,
                progress=self.exportProgress,
            )
            for description in result.descriptions:
                self.ui.resultsList.addItem(description)
            if self.ui.importToDatabaseCheckBox.checked:
                self.logic.importIntoDicomDatabase(result.output_folder)
                self.ui.resultsList.addItem("Imported into the DICOM database.")
        except Cancelled:
            return None, "Cancelled. No object was sent."
        except Media2DICOMError as exc:
            self.showError(str(exc))
            return None, "Export failed."
        except Exception as exc:
            logging.exception("Media2DICOM export failed")
            self.showError(f"The export failed unexpectedly: {exc}")
            return None, "Export failed."
        return result, None

    def startSend(self, serverName, paths):
        """Send in a worker thread and poll it from a timer, so Slicer stays usable."""
        self.ui.statusLabel.text = f"Sending to {serverName}..."
        self.sendTask = slicer_support.BackgroundTask(
            self.logic.sendFiles, (serverName, paths), name="send"
        ).start()
        self.sendTimer = qt.QTimer()
        self.sendTimer.setInterval(WORKER_POLL_INTERVAL_MS)
        self.sendTimer.connect("timeout()", self.onSendTimer)
        self.sendTimer.start()
        self.updateButtons()

    def currentSource(self):
        if self.querySource is not None:
            accession = self.ui.accessionLineEdit.text.strip()
            if accession != str(
                self.querySource.header.get("AccessionNumber", "") or ""
            ):
                self.querySource.accession_number = accession
            return self.querySource
        return self.logic.readSource(
            self.sourceFiles, accessionNumber=self.accessionOverride()
        )

    def accessionOverride(self):
        """Return the edited Accession Number, or None when it was not changed."""
        original = self.logic.sourceSummary(
            self.ui.sourceVolumeSelector.currentNode()
        ).get("AccessionNumber", "")
        edited = self.ui.accessionLineEdit.text.strip()
        return None if edited == original else edited

    def onExportProgress(self, state):
        self.showProgress(state)
        slicer.app.processEvents()

    def showProgress(self, state):
        self.ui.progressBar.maximum = max(state.total, 1)
        self.ui.progressBar.value = min(state.done, max(state.total, 1))
        self.ui.statusLabel.text = state.message

    def onSendTimer(self):
        task = self.sendTask
        self.lendTimeToWorker(task)
        self.showProgress(task.progress.state)
        if not task.finished:
            return
        self.sendTimer.stop()
        self.sendTask = None
        if isinstance(task.error, Cancelled):
            self.finishSend("Sending cancelled. Unsent objects stay in the outbox.")
        elif task.error is not None:
            self.finishSend("Sending failed. Unsent objects stay in the outbox.")
            self.showError(str(task.error))
        else:
            for storeResult in task.result:
                self.ui.resultsList.addItem(
                    slicer_support.store_result_line(storeResult)
                )
            sent = sum(1 for r in task.result if r.stored)
            self.finishSend(f"Sent {sent} of {len(task.result)} object(s).")

    def onCancel(self):
        if self.exportProgress is not None:
            self.exportProgress.cancel()
        if self.sendTask is not None:
            self.sendTask.cancel()
        self.ui.statusLabel.text = "Cancelling after the current step..."

    def finishSend(self, message):
        self.ui.progressBar.visible = False
        self.ui.statusLabel.text = message
        self.updateButtons()

    # Helpers

    def ensureNetworkPackages(self):
        """Install pynetdicom if needed, and return False when it is not available."""
        try:
            self.logic.ensurePackages(send=True)
        except Media2DICOMError as exc:
            self.showError(str(exc))
            return False
        return True

    def runInBackground(self, name, function, arguments, onDone):
        """Run network work in a thread and call ``onDone(task)`` in the GUI thread."""

        def run(*args, progress):
            return function(*args)

        task = slicer_support.BackgroundTask(run, arguments, name=name).start()
        timer = qt.QTimer()
        timer.setInterval(WORKER_POLL_INTERVAL_MS)

        def poll():
            self.lendTimeToWorker(task)
            if task.finished:
                timer.stop()
                self.backgroundTasks.remove((task, timer))
                onDone(task)

        timer.connect("timeout()", poll)
        self.backgroundTasks.append((task, timer))
        timer.start()

    @staticmethod
    def lendTimeToWorker(task):
        """Sleep briefly while ``task`` runs, so its threads can take the GIL."""
        if not task.finished:
            time.sleep(WORKER_SLICE_SECONDS)

    def showError(self, message):
        self.ui.statusLabel.text = message
        slicer.util.errorDisplay(message, windowTitle="Media2DICOM")

    @staticmethod
    def qColor(color):
        return qt.QColor.fromRgbF(color[0], color[1], color[2])


class ServerDialog(qt.QDialog):
    """Form for the name, address and AE title of one server."""

    def __init__(self, values, parent=None):
        qt.QDialog.__init__(self, parent)
        self.setWindowTitle("Media2DICOM server")
        layout = qt.QFormLayout(self)
        self.nameEdit = qt.QLineEdit(values.get("name", ""))
        self.descriptionEdit = qt.QLineEdit(values.get("description", ""))
        self.hostEdit = qt.QLineEdit(values.get("host", ""))
        self.portSpinBox = qt.QSpinBox()
        self.portSpinBox.setRange(1, 65535)
        self.portSpinBox.setValue(int(values.get("port", 104)))
        self.aeTitleEdit = qt.QLineEdit(values.get("called_aet", ""))
        self.aeTitleEdit.setMaxLength(16)
        layout.addRow("Name:", self.nameEdit)
        layout.addRow("Description:", self.descriptionEdit)
        layout.addRow("Host:", self.hostEdit)
        layout.addRow("Port:", self.portSpinBox)
        layout.addRow("Called AE title:", self.aeTitleEdit)
        note = qt.QLabel(
            "TLS and DICOMweb options are edited in the settings file or with "
            "'media2dicom servers edit'."
        )
        note.wordWrap = True
        layout.addRow(note)
        buttons = qt.QDialogButtonBox()
        buttons.setStandardButtons(qt.QDialogButtonBox.Ok | qt.QDialogButtonBox.Cancel)
        buttons.connect("accepted()", self.accept)
        buttons.connect("rejected()", self.reject)
        layout.addRow(buttons)

    def values(self):
        return {
            "name": self.nameEdit.text.strip(),
            "description": self.descriptionEdit.text.strip(),
            "host": self.hostEdit.text.strip(),
            "port": self.portSpinBox.value,
            "called_aet": self.aeTitleEdit.text.strip(),
        }


#
# Media2DICOMLogic
#


class Media2DICOMLogic(ScriptedLoadableModuleLogic):
    """Scene content exported as DICOM, usable from the Python console without the GUI.

    Example::

        import Media2DICOM
        logic = Media2DICOM.Media2DICOMLogic()
        result = logic.exportSegments(getNode("Segmentation"), serverName="PACS")
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        # None means the library's default settings file, shared with the
        # media2dicom command line.
        self.settingsPath = None

    # Source study

    def sourceFilesForVolume(self, volumeNode):
        """Return the DICOM files of the series a volume was loaded from.

        The files come from the volume's ``DICOM.instanceUIDs`` attribute or,
        when it is missing, from the series UID of its subject hierarchy item,
        looked up in Slicer's DICOM database.
        """
        database = self.dicomDatabase()
        if database is None:
            raise Media2DICOMError(
                "Slicer's DICOM database is not open. Open the DICOM module once, "
                "then load the volume from the DICOM browser."
            )
        uids = slicer_support.instance_uids_from_attribute(
            volumeNode.GetAttribute("DICOM.instanceUIDs")
        )
        if not uids:
            seriesUid = self.seriesUidForNode(volumeNode)
            if seriesUid:
                uids = list(database.instancesForSeries(seriesUid))
        files = [database.fileForInstance(uid) for uid in uids]
        files = [f for f in files if f and os.path.isfile(f)]
        if not files:
            raise Media2DICOMError(
                f"The volume '{volumeNode.GetName()}' was not loaded from DICOM files "
                "that are in the DICOM database, so its study is unknown. Load the "
                "CT or MR from the DICOM browser, or find the study on a server."
            )
        return files

    @staticmethod
    def dicomDatabase():
        """Return Slicer's open DICOM database, or None.

        ``slicer.dicomDatabase`` exists once the DICOM module has started.
        """
        try:
            database = slicer.dicomDatabase
        except AttributeError:
            return None
        if database is None or not database.isOpen:
            return None
        return database

    def seriesUidForNode(self, node):
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(
            slicer.mrmlScene
        )
        itemId = shNode.GetItemByDataNode(node)
        if not itemId:
            return ""
        return shNode.GetItemUID(
            itemId, slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMUIDName()
        )

    def sourceSummary(self, volumeNode):
        """Read patient, study date, accession and modality from the DICOM database."""
        if volumeNode is None:
            return {}
        uids = slicer_support.instance_uids_from_attribute(
            volumeNode.GetAttribute("DICOM.instanceUIDs")
        )
        database = self.dicomDatabase()
        if not uids and database is not None:
            seriesUid = self.seriesUidForNode(volumeNode)
            uids = list(database.instancesForSeries(seriesUid)) if seriesUid else []
        if not uids or database is None:
            return {}
        tags = {
            "PatientName": "0010,0010",
            "PatientID": "0010,0020",
            "StudyDate": "0008,0020",
            "AccessionNumber": "0008,0050",
            "Modality": "0008,0060",
        }
        return {
            keyword: database.instanceValue(uids[0], tag)
            for keyword, tag in tags.items()
        }

    def readSource(self, files, accessionNumber=None):
        """Read the source series from DICOM files (headers only)."""
        from Media2DICOMLib.source_study import read_source_series

        return read_source_series(files, accession_number=accessionNumber)

    def sourceForVolume(self, volumeNode, accessionNumber=None):
        return self.readSource(self.sourceFilesForVolume(volumeNode), accessionNumber)

    def referenceVolumeForNode(self, node):
        """Find the DICOM volume a segmentation or model belongs to.

        A segmentation names its reference volume. Otherwise the node must be
        inside a subject hierarchy study, and the first volume with DICOM
        instance UIDs in that study is used.
        """
        if node is not None and node.IsA("vtkMRMLSegmentationNode"):
            role = (
                slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
            )
            volumeNode = node.GetNodeReference(role)
            if volumeNode is not None and volumeNode.GetAttribute("DICOM.instanceUIDs"):
                return volumeNode
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(
            slicer.mrmlScene
        )
        itemId = shNode.GetItemByDataNode(node) if node is not None else 0
        studyLevel = slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMLevelStudy()
        studyId = shNode.GetItemParent(itemId) if itemId else 0
        while studyId and shNode.GetItemLevel(studyId) != studyLevel:
            studyId = shNode.GetItemParent(studyId)
        if not studyId:
            return None
        children = vtk.vtkIdList()
        shNode.GetItemChildren(studyId, children, True)
        for index in range(children.GetNumberOfIds()):
            dataNode = shNode.GetItemDataNode(children.GetId(index))
            if (
                dataNode is not None
                and dataNode.IsA("vtkMRMLScalarVolumeNode")
                and dataNode.GetAttribute("DICOM.instanceUIDs")
            ):
                return dataNode
        return None

    # Query, servers and sending: plain-Python helpers that the panel runs
    # in worker threads, so they touch neither Qt nor the scene.

    def loadSettings(self):
        from Media2DICOMLib.settings import load_settings

        return load_settings(self.settingsPath)

    def querySeries(self, serverName, patientId="", accessionNumber=""):
        """Find the series of matching studies on a server with C-FIND."""
        return slicer_support.find_series(
            self.loadSettings(), serverName, patientId, accessionNumber
        )

    def retrieveSource(self, serverName, seriesRow, accessionNumber=None):
        """Retrieve the source header of a found series by C-GET."""
        return slicer_support.retrieve_series(
            self.loadSettings(), serverName, seriesRow, accessionNumber
        )

    def serverNames(self):
        return [server.name for server in self.loadSettings().servers]

    def serverValues(self, name):
        return slicer_support.server_values(self.loadSettings(), name)

    def saveServer(self, originalName, values):
        """Add a server, or replace ``originalName``, and return the saved name."""
        return slicer_support.save_server(self.settingsPath, originalName, values)

    def echoServer(self, serverName):
        """Check a server with C-ECHO. Network errors are in the result, not raised."""
        from Media2DICOMLib.network import echo

        settings = self.loadSettings()
        return echo(
            settings.server(serverName),
            calling_aet=settings.ae_title,
            timeouts=settings.timeouts,
        )

    def sendFiles(self, serverName, paths, progress=None):
        """Send files through the outbox, so unsent objects can be retried later."""
        return slicer_support.send_through_outbox(
            self.loadSettings(), serverName, paths, progress
        )

    # Packages

    def ensurePackages(self, send=False, video=False):
        """Install missing packages after the user agrees.

        In testing mode nothing is installed and the missing packages are
        reported, because Slicer's confirmation dialog then returns Yes
        without showing itself.

        Raises
        ------
        Media2DICOMError
            When packages are missing and were not installed.
        """
        requirements = slicer_support.requirements_for(send=send, video=video)
        missing = slicer_support.missing_requirements(requirements)
        if not missing:
            return
        if slicer.app.testingEnabled():
            raise slicer_support.PackageError(slicer_support.describe_missing(missing))
        listing = "\n".join(f"- {r.pip_requirement} ({r.purpose})" for r in missing)
        if not slicer.util.confirmYesNoDisplay(
            f"Media2DICOM needs these Python packages:\n{listing}\n\nInstall them now?",
            windowTitle="Media2DICOM",
        ):
            raise slicer_support.PackageError(slicer_support.describe_missing(missing))

        specifiers = [r.pip_requirement for r in missing]
        try:
            packaging = self.slicerPackaging()
            if packaging is not None:
                packaging.pip_ensure(
                    specifiers, requester="Media2DICOM", prompt_install=False
                )
            else:
                slicer.util.pip_install(specifiers)
        except Exception as exc:
            logging.error("Installing %s failed: %s", specifiers, exc)
            raise slicer_support.PackageError(
                f"Installing {', '.join(specifiers)} failed: {exc}. If this computer "
                "is offline, install the packages another way or export to a local "
                "folder only."
            ) from exc

        import importlib

        importlib.invalidate_caches()
        stillMissing = slicer_support.missing_requirements(requirements)
        if stillMissing:
            raise slicer_support.PackageError(
                slicer_support.describe_missing(stillMissing)
            )

    @staticmethod
    def slicerPackaging():
        """Return ``slicer.packaging`` (Slicer 5.12 and later), else None."""
        try:
            import slicer.packaging as packaging
        except ImportError:
            return None
        return packaging if hasattr(packaging, "pip_ensure") else None

    # Gathering content from the scene

    def emptySegmentIds(self, segmentationNode, segmentIds):
        """Return the IDs of the given segments whose closed surface has no points.

        The closed surface representation is made first, as the export does.
        """
        segmentationNode.CreateClosedSurfaceRepresentation()
        emptyIds = []
        for segmentId in segmentIds:
            polyData = vtk.vtkPolyData()
            slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentClosedSurfaceRepresentation(
                segmentationNode, segmentId, polyData, False
            )
            if polyData.GetNumberOfPoints() == 0:
                emptyIds.append(segmentId)
        return emptyIds

    def writeSegmentSurfaces(self, segmentationNode, segmentIds, folder):
        """Write each segment's closed surface as binary STL in LPS millimetres.

        The segmentation's parent transform is applied. Returns one
        ``(path, name, color, opacity)`` tuple per segment, in the given order.
        """
        if not segmentationNode.CreateClosedSurfaceRepresentation():
            raise Media2DICOMError(
                "Slicer could not make closed surfaces of "
                f"'{segmentationNode.GetName()}'. "
                "Check that its segments are not empty."
            )
        segmentation = segmentationNode.GetSegmentation()
        segmentationDisplayNode = segmentationNode.GetDisplayNode()
        surfaces = []
        for index, segmentId in enumerate(segmentIds):
            segment = segmentation.GetSegment(segmentId)
            if segment is None:
                raise Media2DICOMError(
                    f"Segment ID '{segmentId}' is not in "
                    f"'{segmentationNode.GetName()}'."
                )
            polyData = vtk.vtkPolyData()
            segmentationsLogic = slicer.vtkSlicerSegmentationsModuleLogic
            ok = segmentationsLogic.GetSegmentClosedSurfaceRepresentation(
                segmentationNode, segmentId, polyData, True
            )
            if not ok or polyData.GetNumberOfPoints() == 0:
                raise Media2DICOMError(
                    f"Segment '{segment.GetName()}' has no surface, so it may be "
                    "empty. Untick it or paint it first."
                )
            stem = slicer_support.safe_file_stem(
                segment.GetName(), f"segment{index + 1}"
            )
            path = Path(folder) / f"{index + 1:03d}_{stem}.stl"
            self.writeRasPolyDataAsLpsStl(polyData, path)
            opacity = 1.0
            if segmentationDisplayNode is not None:
                opacity = segmentationDisplayNode.GetSegmentOpacity3D(segmentId)
            surfaces.append(
                (path, segment.GetName(), list(segment.GetColor()), opacity)
            )
        return surfaces

    def writeModelSurface(self, modelNode, path):
        """Write a model node as binary LPS STL with its parent transforms applied."""
        polyData = modelNode.GetPolyData()
        if polyData is None or polyData.GetNumberOfPoints() == 0:
            raise Media2DICOMError(
                f"The model '{modelNode.GetName()}' has no surface to export."
            )
        parentTransformNode = modelNode.GetParentTransformNode()
        if parentTransformNode is not None:
            toWorld = vtk.vtkGeneralTransform()
            slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(
                parentTransformNode, None, toWorld
            )
            transformFilter = vtk.vtkTransformPolyDataFilter()
            transformFilter.SetTransform(toWorld)
            transformFilter.SetInputData(polyData)
            transformFilter.Update()
            polyData = transformFilter.GetOutput()
        self.writeRasPolyDataAsLpsStl(polyData, path)
        modelDisplayNode = modelNode.GetDisplayNode()
        color = list(modelDisplayNode.GetColor()) if modelDisplayNode else None
        opacity = modelDisplayNode.GetOpacity() if modelDisplayNode else None
        return path, modelNode.GetName(), color, opacity

    @staticmethod
    def writeRasPolyDataAsLpsStl(polyData, path):
        """Write RAS polydata as a triangulated binary STL in LPS coordinates."""
        # Negating x and y has determinant +1, so triangle winding and the
        # outward normals are kept.
        rasToLps = vtk.vtkTransform()
        rasToLps.Scale(-1.0, -1.0, 1.0)
        transformFilter = vtk.vtkTransformPolyDataFilter()
        transformFilter.SetTransform(rasToLps)
        transformFilter.SetInputData(polyData)
        triangulator = vtk.vtkTriangleFilter()
        triangulator.SetInputConnection(transformFilter.GetOutputPort())
        writer = vtk.vtkSTLWriter()
        writer.SetInputConnection(triangulator.GetOutputPort())
        writer.SetFileTypeToBinary()
        writer.SetHeader(STL_HEADER)
        writer.SetFileName(str(path))
        if not writer.Write():
            raise Media2DICOMError(
                f"Failed to write the surface file {path}. Check the free space and "
                "permissions of the output folder."
            )

    def captureScreenshot(self, path, viewNode=None):
        """Capture the whole view layout, or one view, as a PNG file."""
        import ScreenCapture

        self.requireViews("A screenshot")
        capture = ScreenCapture.ScreenCaptureLogic()
        # Screen Capture raises ValueError when the view is not in the current
        # layout or the captured image is smaller than 2 x 2 pixels.
        try:
            view = capture.viewFromNode(viewNode) if viewNode is not None else None
            capture.captureImageFromView(view, str(path))
        except ValueError as exc:
            raise Media2DICOMError(f"Screenshot capture failed: {exc}") from exc
        if not os.path.isfile(path):
            raise Media2DICOMError(
                f"The screenshot was not written to {path}. Show the view in the "
                "layout and try again."
            )
        return Path(path)

    def captureCine(
        self,
        folder,
        mode,
        viewNode,
        numberOfFrames,
        sequenceBrowserNode=None,
        progress=None,
    ):
        """Capture numbered PNG frames with Slicer's Screen Capture logic.

        ``mode`` is ``"Slice sweep"`` (a slice view through the volume),
        ``"3D rotation"`` (a full turn of a 3D view about its vertical axis)
        or ``"Sequence"`` (every step of a sequence browser). Returns the
        frame folder.
        """
        import ScreenCapture

        if numberOfFrames < 2:
            raise Media2DICOMError(
                f"A cine needs at least 2 frames, but {numberOfFrames} was requested."
            )
        self.requireViews("A cine")
        capture = ScreenCapture.ScreenCaptureLogic()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        pattern = "frame_%05d.png"
        captured = [0]

        def onFrame(text):
            captured[0] += 1
            if progress is None:
                return
            try:
                progress(
                    captured[0], numberOfFrames, f"Capturing cine frame {captured[0]}"
                )
            except Cancelled:
                # Screen Capture restores the view when it stops by itself.
                capture.requestCancel()

        capture.logCallback = onFrame
        try:
            if mode == CINE_SLICE_SWEEP:
                sliceNode = self.requireViewNode(viewNode, "vtkMRMLSliceNode", mode)
                start, end = capture.getSliceOffsetRange(sliceNode)
                capture.captureSliceSweep(
                    sliceNode, start, end, numberOfFrames, str(folder), pattern
                )
            elif mode == CINE_3D_ROTATION:
                threeDViewNode = self.requireViewNode(viewNode, "vtkMRMLViewNode", mode)
                # One full turn without repeating the first frame at the end.
                end = 360.0 - 360.0 / numberOfFrames
                capture.capture3dViewRotation(
                    threeDViewNode,
                    0.0,
                    end,
                    numberOfFrames,
                    ScreenCapture.AXIS_YAW,
                    str(folder),
                    pattern,
                )
            elif mode == CINE_SEQUENCE:
                if sequenceBrowserNode is None:
                    raise Media2DICOMError(
                        "A sequence cine needs a sequence browser. Select one."
                    )
                sequenceViewNode = viewNode
                if sequenceViewNode is None:
                    raise Media2DICOMError(
                        "A sequence cine is captured from one view. Select a view."
                    )
                itemCount = sequenceBrowserNode.GetNumberOfItems()
                if itemCount < 2:
                    raise Media2DICOMError(
                        f"The sequence browser '{sequenceBrowserNode.GetName()}' "
                        f"has {itemCount} item(s), but a sequence cine needs at "
                        "least 2. Select a browser of a longer sequence."
                    )
                capture.captureSequence(
                    sequenceViewNode,
                    sequenceBrowserNode,
                    0,
                    itemCount - 1,
                    numberOfFrames,
                    str(folder),
                    pattern,
                )
            else:
                raise Media2DICOMError(
                    f"Unknown cine mode '{mode}'. Use one of {', '.join(CINE_MODES)}."
                )
        except ValueError as exc:
            if capture.cancelRequested:
                raise Cancelled("Cine capture cancelled") from exc
            raise Media2DICOMError(f"Cine capture failed: {exc}") from exc
        finally:
            capture.logCallback = None
        return folder

    @staticmethod
    def requireViews(captureName):
        """Raise Media2DICOMError unless Slicer shows its main window and views.

        Screen Capture reads the views through the layout manager and grabs
        the layout from the main window, and neither exists when Slicer runs
        with ``--no-main-window``.
        """
        if slicer.app.layoutManager() is None or slicer.util.mainWindow() is None:
            raise Media2DICOMError(
                f"{captureName} needs Slicer's main window and its views, which this "
                "Slicer session does not show. Start Slicer with its main window."
            )

    @staticmethod
    def requireViewNode(viewNode, className, mode):
        if viewNode is None or not viewNode.IsA(className):
            kind = "slice" if className == "vtkMRMLSliceNode" else "3D"
            raise Media2DICOMError(
                f"A {mode.lower()} cine is captured from a {kind} view. Select one."
            )
        return viewNode

    # Writing and sending

    def writeObjects(
        self,
        source,
        content,
        outputFolder=None,
        firstSeriesNumber=901,
        seriesDescription=None,
        colorText=True,
        progress=None,
    ):
        """Gather the content from the scene and write it as DICOM objects.

        Segment and model surfaces are written as LPS STL files and the views
        are captured as PNG files in a temporary folder, which is removed
        afterwards. Returns a :class:`~Media2DICOMLib.slicer_support.WrittenExport`;
        nothing is sent.
        """
        if content.isEmpty():
            raise Media2DICOMError(
                "Nothing to export: give segments, models, files, a screenshot or "
                "a cine."
            )
        outputFolder = Path(outputFolder or tempfile.mkdtemp(prefix="Media2DICOM-"))
        workFolder = Path(tempfile.mkdtemp(prefix="Media2DICOM-work-"))
        try:
            export = self.gatherFiles(content, workFolder, progress)
            return slicer_support.write_export(
                source,
                export,
                outputFolder,
                first_series_number=firstSeriesNumber,
                series_description=seriesDescription,
                color_text=colorText,
                progress=progress,
            )
        finally:
            shutil.rmtree(workFolder, ignore_errors=True)

    def gatherFiles(self, content, workFolder, progress=None):
        """Write surfaces and captures of the content into ``workFolder``."""
        from Media2DICOMLib.encapsulated_stl import ModelSpec

        export = slicer_support.ExportFiles()
        if content.segmentIds:
            surfaces = self.writeSegmentSurfaces(
                content.segmentationNode, content.segmentIds, workFolder
            )
            for segmentId, (path, name, color, opacity) in zip(
                content.segmentIds, surfaces
            ):
                export.models.append(
                    ModelSpec(
                        path,
                        name=name,
                        color=tuple(content.segmentColors.get(segmentId, color)),
                        opacity=content.segmentOpacities.get(segmentId, opacity),
                        space="LPS",
                    )
                )
        for index, modelNode in enumerate(content.modelNodes):
            stem = slicer_support.safe_file_stem(modelNode.GetName(), "model")
            path, name, color, opacity = self.writeModelSurface(
                modelNode, workFolder / f"model_{index + 1:03d}_{stem}.stl"
            )
            export.models.append(
                ModelSpec(
                    path,
                    name=name,
                    color=tuple(color) if color else None,
                    opacity=opacity,
                    space="LPS",
                )
            )
        export.models.extend(ModelSpec(path) for path in content.stlFiles)

        if content.screenshot:
            if progress is not None:
                progress(0, 1, "Capturing the screenshot")
            export.screenshots.append(
                self.captureScreenshot(
                    workFolder / "screenshot.png", content.screenshotViewNode
                )
            )
        if content.cineMode:
            frameFolder = self.captureCine(
                workFolder / "cine",
                content.cineMode,
                content.cineViewNode,
                content.cineFrames,
                content.cineSequenceBrowserNode,
                progress,
            )
            export.cine_frames = [frameFolder]
            export.cine_frames_per_second = content.cineFramesPerSecond
            export.cine_label = f"Cine ({content.cineMode})"
        export.media_files = [Path(path) for path in content.mediaFiles]
        return export

    def importIntoDicomDatabase(self, folder):
        """Add written objects to Slicer's DICOM database for the DICOM browser."""
        from DICOMLib import DICOMUtils

        database = self.dicomDatabase()
        if database is None:
            raise Media2DICOMError(
                "Slicer's DICOM database is not open, so the objects were not "
                f"imported. They are in {folder}."
            )
        if not DICOMUtils.importDicom(str(folder), database, copyFiles=True):
            raise Media2DICOMError(
                f"Importing {folder} into the DICOM database failed. See the log."
            )

    def export(
        self,
        content,
        referenceVolumeNode=None,
        serverName=None,
        outputFolder=None,
        firstSeriesNumber=901,
        seriesDescription=None,
        colorText=True,
        accessionNumber=None,
        importToDatabase=False,
        progress=None,
    ):
        """Write the content into the reference volume's study, then import and send.

        Blocks until sending ends. The panel sends in a worker thread instead.
        """
        if referenceVolumeNode is None:
            referenceVolumeNode = self.referenceVolumeForNode(content.segmentationNode)
        if referenceVolumeNode is None:
            raise Media2DICOMError(
                "No reference volume loaded from DICOM was given or found. Pass "
                "referenceVolumeNode, the CT or MR the content belongs to."
            )
        self.ensurePackages(send=serverName is not None, video=content.hasVideo())
        source = self.sourceForVolume(referenceVolumeNode, accessionNumber)
        result = self.writeObjects(
            source,
            content,
            outputFolder=outputFolder,
            firstSeriesNumber=firstSeriesNumber,
            seriesDescription=seriesDescription,
            colorText=colorText,
            progress=progress,
        )
        if importToDatabase:
            self.importIntoDicomDatabase(result.output_folder)
        if serverName:
            result.store_results = self.sendFiles(serverName, result.files, progress)
        return result

    # Scripting API

    def exportSegments(
        self,
        segmentationNode,
        segmentIds=None,
        serverName=None,
        outputFolder=None,
        referenceVolumeNode=None,
        seriesNumber=901,
        seriesDescription="3D models",
        colors=None,
        opacities=None,
        colorText=True,
        accessionNumber=None,
        importToDatabase=False,
    ):
        """Export segments as Encapsulated STL objects sharing one Model Group UID.

        :param segmentationNode: segmentation whose segments are exported.
        :param segmentIds: segment IDs to export; all segments when None.
        :param serverName: server from the saved list; None writes files only.
        :param outputFolder: folder for the DICOM files; a new temporary folder
            when None.
        :param referenceVolumeNode: DICOM volume whose study receives the objects;
            the segmentation's reference volume when None.
        :param seriesNumber: Series Number of the new M3D series.
        :param seriesDescription: Series Description of the new series.
        :param colors: dict of segment ID to sRGB colour (0-1) overriding the
            segment's colour.
        :param opacities: dict of segment ID to opacity (0-1) overriding the 3D opacity.
        :param colorText: also write ``ColorRGB(R, G, B)`` in Content Description.
        :param accessionNumber: Accession Number written in place of the source's.
        :param importToDatabase: also import the objects into Slicer's DICOM database.
        :return: :class:`~Media2DICOMLib.slicer_support.WrittenExport`
        """
        if segmentIds is None:
            segmentation = segmentationNode.GetSegmentation()
            segmentIds = [
                segmentation.GetNthSegmentID(i)
                for i in range(segmentation.GetNumberOfSegments())
            ]
        content = ExportContent(
            segmentationNode=segmentationNode,
            segmentIds=list(segmentIds),
            segmentColors=dict(colors or {}),
            segmentOpacities=dict(opacities or {}),
        )
        return self.export(
            content,
            referenceVolumeNode=referenceVolumeNode,
            serverName=serverName,
            outputFolder=outputFolder,
            firstSeriesNumber=seriesNumber,
            seriesDescription=seriesDescription,
            colorText=colorText,
            accessionNumber=accessionNumber,
            importToDatabase=importToDatabase,
        )

    def exportScreenshot(
        self,
        referenceVolumeNode,
        viewNode=None,
        serverName=None,
        outputFolder=None,
        seriesNumber=902,
        seriesDescription="Screenshot",
        accessionNumber=None,
        importToDatabase=False,
    ):
        """Export a screenshot of the whole layout or one view as Secondary Capture.

        :param referenceVolumeNode: DICOM volume whose study receives the object.
        :param viewNode: slice or 3D view node to capture; the whole layout when None.
        :param serverName: server from the saved list; None writes files only.
        :param outputFolder: folder for the DICOM file; a new temporary folder
            when None.
        :param seriesNumber: Series Number of the new series.
        :param seriesDescription: Series Description of the new series.
        :param accessionNumber: Accession Number written in place of the source's.
        :param importToDatabase: also import the object into Slicer's DICOM database.
        :return: :class:`~Media2DICOMLib.slicer_support.WrittenExport`
        """
        content = ExportContent(screenshot=True, screenshotViewNode=viewNode)
        firstSeriesNumber = (
            seriesNumber - slicer_support.SERIES_NUMBER_OFFSETS["screenshots"]
        )
        return self.export(
            content,
            referenceVolumeNode=referenceVolumeNode,
            serverName=serverName,
            outputFolder=outputFolder,
            firstSeriesNumber=firstSeriesNumber,
            seriesDescription=seriesDescription,
            colorText=True,
            accessionNumber=accessionNumber,
            importToDatabase=importToDatabase,
        )

    def exportCine(
        self,
        referenceVolumeNode,
        mode=CINE_3D_ROTATION,
        viewNode=None,
        numberOfFrames=36,
        framesPerSecond=10.0,
        sequenceBrowserNode=None,
        serverName=None,
        outputFolder=None,
        seriesNumber=903,
        seriesDescription="Cine",
        accessionNumber=None,
        importToDatabase=False,
    ):
        """Export a slice sweep, 3D rotation or sequence as a cine Secondary Capture.

        :param referenceVolumeNode: DICOM volume whose study receives the object.
        :param mode: ``"Slice sweep"``, ``"3D rotation"`` or ``"Sequence"``.
        :param viewNode: slice view node (sweep) or 3D view node (rotation, sequence);
            the first 3D view when None.
        :param numberOfFrames: frames to capture, at least 2.
        :param framesPerSecond: playback rate written as Frame Time.
        :param sequenceBrowserNode: browser stepped through in ``"Sequence"`` mode.
        :param serverName: server from the saved list; None writes files only.
        :param outputFolder: folder for the DICOM file; a new temporary folder
            when None.
        :param seriesNumber: Series Number of the new series.
        :param seriesDescription: Series Description of the new series.
        :param accessionNumber: Accession Number written in place of the source's.
        :param importToDatabase: also import the object into Slicer's DICOM database.
        :return: :class:`~Media2DICOMLib.slicer_support.WrittenExport`
        """
        if viewNode is None and mode != CINE_SLICE_SWEEP:
            layoutManager = slicer.app.layoutManager()
            if layoutManager is not None and layoutManager.threeDViewCount > 0:
                viewNode = layoutManager.threeDWidget(0).mrmlViewNode()
        content = ExportContent(
            cineMode=mode,
            cineViewNode=viewNode,
            cineSequenceBrowserNode=sequenceBrowserNode,
            cineFrames=numberOfFrames,
            cineFramesPerSecond=framesPerSecond,
        )
        firstSeriesNumber = seriesNumber - slicer_support.SERIES_NUMBER_OFFSETS["cine"]
        return self.export(
            content,
            referenceVolumeNode=referenceVolumeNode,
            serverName=serverName,
            outputFolder=outputFolder,
            firstSeriesNumber=firstSeriesNumber,
            seriesDescription=seriesDescription,
            colorText=True,
            accessionNumber=accessionNumber,
            importToDatabase=importToDatabase,
        )


#
# Media2DICOMTest
#


class Media2DICOMTest(ScriptedLoadableModuleTest):
    """Self-test that builds a CT and a segmentation in the scene and exports them."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ExportSegmentsToFolder()
        self.setUp()
        self.test_ExportScreenshotToFolder()

    def writeCtSeries(self, folder):
        """Write a 3-slice CT series with pydicom, which Slicer bundles."""
        import numpy as np
        import pydicom

        from Media2DICOMLib.new_series import new_uid, save_dataset

        studyUid, seriesUid, frameUid = new_uid(), new_uid(), new_uid()
        for index in range(3):
            dataset = pydicom.Dataset()
            dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
            dataset.SOPInstanceUID = new_uid()
            dataset.PatientName = "Media2DICOM^Test"
            dataset.PatientID = "M2D-TEST"
            dataset.StudyInstanceUID = studyUid
            dataset.SeriesInstanceUID = seriesUid
            dataset.FrameOfReferenceUID = frameUid
            dataset.StudyDate = "20240101"
            dataset.StudyTime = "120000"
            dataset.AccessionNumber = "ACC-1"
            dataset.Modality = "CT"
            dataset.SeriesNumber = 1
            dataset.InstanceNumber = index + 1
            dataset.ImagePositionPatient = [-16.0, -16.0, float(index * 2)]
            dataset.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
            dataset.PixelSpacing = [1.0, 1.0]
            dataset.SliceThickness = 2.0
            dataset.Rows = dataset.Columns = 32
            dataset.SamplesPerPixel = 1
            dataset.PhotometricInterpretation = "MONOCHROME2"
            dataset.BitsAllocated = dataset.BitsStored = 16
            dataset.HighBit = 15
            dataset.PixelRepresentation = 1
            dataset.RescaleIntercept = 0
            dataset.RescaleSlope = 1
            dataset.PixelData = np.full((32, 32), 40, dtype=np.int16).tobytes()
            save_dataset(dataset, os.path.join(folder, f"ct{index + 1}.dcm"))
        return seriesUid, frameUid

    def loadCt(self, folder):
        from DICOMLib import DICOMUtils

        seriesUid, frameUid = self.writeCtSeries(folder)
        DICOMUtils.importDicom(folder)
        nodeIds = DICOMUtils.loadSeriesByUID([seriesUid])
        self.assertEqual(len(nodeIds), 1)
        return slicer.mrmlScene.GetNodeByID(nodeIds[0]), frameUid

    def test_ExportSegmentsToFolder(self):
        """Export two segments and check modality, Frame of Reference, colour, group."""
        import pydicom
        from DICOMLib import DICOMUtils

        from Media2DICOMLib.color import srgb_to_dicom_lab

        self.delayDisplay("Exporting segments")
        with (
            tempfile.TemporaryDirectory() as folder,
            DICOMUtils.TemporaryDICOMDatabase(),
        ):
            ctFolder = os.path.join(folder, "ct")
            os.makedirs(ctFolder)
            volumeNode, frameUid = self.loadCt(ctFolder)

            segmentationNode = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode"
            )
            segmentationNode.CreateDefaultDisplayNodes()
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(
                volumeNode
            )
            colors = {"ball": (0.9, 0.2, 0.1), "cube": (0.1, 0.4, 0.9)}
            sphere = vtk.vtkSphereSource()
            sphere.SetCenter(0.0, 0.0, 2.0)
            sphere.SetRadius(6.0)
            sphere.Update()
            segmentationNode.AddSegmentFromClosedSurfaceRepresentation(
                sphere.GetOutput(), "ball", colors["ball"]
            )
            cube = vtk.vtkCubeSource()
            cube.SetBounds(4.0, 10.0, 4.0, 10.0, 0.0, 4.0)
            cube.Update()
            segmentationNode.AddSegmentFromClosedSurfaceRepresentation(
                cube.GetOutput(), "cube", colors["cube"]
            )

            outputFolder = os.path.join(folder, "out")
            result = Media2DICOMLogic().exportSegments(
                segmentationNode,
                outputFolder=outputFolder,
                referenceVolumeNode=volumeNode,
            )

            self.assertEqual(len(result.files), 2)
            datasets = [pydicom.dcmread(str(path)) for path in result.files]
            for dataset in datasets:
                self.assertEqual(dataset.Modality, "M3D")
                self.assertEqual(dataset.SOPClassUID, "1.2.840.10008.5.1.4.1.1.104.3")
                self.assertEqual(dataset.FrameOfReferenceUID, frameUid)
                self.assertEqual(dataset.PatientID, "M2D-TEST")
                self.assertEqual(dataset.AccessionNumber, "ACC-1")
                name = str(dataset.DocumentTitle)
                self.assertIn(name, colors)
                self.assertEqual(
                    list(dataset.RecommendedDisplayCIELabValue),
                    list(srgb_to_dicom_lab(colors[name])),
                )
                stl = bytes(dataset.EncapsulatedDocument)
                self.assertIn(b"SPACE=LPS", stl[:80])
                if name == "cube":
                    # The cube was drawn at RAS x and y 4..10 mm; LPS negates both.
                    low, high = self.stlBounds(stl)
                    self.assertAlmostEqual(low[0], -10.0, places=3)
                    self.assertAlmostEqual(high[0], -4.0, places=3)
                    self.assertAlmostEqual(low[1], -10.0, places=3)
                    self.assertAlmostEqual(high[1], -4.0, places=3)
                    self.assertAlmostEqual(low[2], 0.0, places=3)
                    self.assertAlmostEqual(high[2], 4.0, places=3)
            self.assertEqual(datasets[0].ModelGroupUID, datasets[1].ModelGroupUID)
            self.assertEqual(
                datasets[0].SeriesInstanceUID, datasets[1].SeriesInstanceUID
            )
        self.delayDisplay("Segment export passed")

    @staticmethod
    def stlBounds(data):
        """Return the minimum and maximum corner of a binary STL's vertices."""
        import numpy as np

        count = int.from_bytes(data[80:84], "little")
        records = np.frombuffer(
            data[84 : 84 + 50 * count],
            dtype=np.dtype(
                [("normal", "<f4", (3,)), ("vertices", "<f4", (9,)), ("a", "<u2")]
            ),
        )
        points = records["vertices"].reshape(-1, 3)
        return points.min(axis=0), points.max(axis=0)

    def test_ExportScreenshotToFolder(self):
        """Export a layout screenshot as a Secondary Capture in the CT study."""
        import pydicom
        from DICOMLib import DICOMUtils

        if slicer.util.mainWindow() is None:
            logging.info("No main window: screenshot export not tested")
            return
        self.delayDisplay("Exporting a screenshot")
        with (
            tempfile.TemporaryDirectory() as folder,
            DICOMUtils.TemporaryDICOMDatabase(),
        ):
            ctFolder = os.path.join(folder, "ct")
            os.makedirs(ctFolder)
            volumeNode, frameUid = self.loadCt(ctFolder)
            result = Media2DICOMLogic().exportScreenshot(
                volumeNode, outputFolder=os.path.join(folder, "out")
            )
            self.assertEqual(len(result.files), 1)
            dataset = pydicom.dcmread(str(result.files[0]))
            self.assertEqual(dataset.SOPClassUID, "1.2.840.10008.5.1.4.1.1.7.4")
            self.assertEqual(dataset.Modality, "CT")
            self.assertEqual(dataset.ConversionType, "WSD")
            self.assertNotIn("FrameOfReferenceUID", dataset)
        self.delayDisplay("Screenshot export passed")
