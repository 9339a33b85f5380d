"""DICOM export plugin: segmentations and models as Encapsulated STL.

Adds "3D model (Encapsulated STL)" to Slicer's "Export to DICOM" dialog for
segmentations and models whose study has a volume loaded from DICOM. The
hidden module class at the end registers the plugin with the DICOM module.
"""

import logging
import os

import slicer
from DICOMLib import DICOMPlugin

EXPORT_NAME = "3D model (Encapsulated STL)"


class Media2DICOMPluginClass(DICOMPlugin):
    """Exports segments and models into the study of their DICOM reference volume."""

    def __init__(self):
        super().__init__()
        self.loadType = EXPORT_NAME

    def examineForExport(self, subjectHierarchyItemID):
        """Offer the export for a segmentation or model with a DICOM volume."""
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(
            slicer.mrmlScene
        )
        dataNode = shNode.GetItemDataNode(subjectHierarchyItemID)
        if dataNode is None:
            return []
        if not (
            dataNode.IsA("vtkMRMLSegmentationNode") or dataNode.IsA("vtkMRMLModelNode")
        ):
            return []

        import Media2DICOM

        logic = Media2DICOM.Media2DICOMLogic()
        if logic.referenceVolumeForNode(dataNode) is None:
            return []

        exportable = slicer.qSlicerDICOMExportable()
        exportable.name = EXPORT_NAME
        exportable.tooltip = (
            "Writes each segment or the model as an Encapsulated STL object in the "
            "study of the reference volume, with its colour and one Model Group UID."
        )
        exportable.subjectHierarchyItemID = subjectHierarchyItemID
        exportable.pluginClass = self.__module__
        # The export dialog lists exportables by confidence, highest first. A
        # low value keeps plugins made for one node type, such as DICOM SEG
        # export of segmentations, above this one.
        exportable.confidence = 0.3
        exportable.setTag("SeriesDescription", "3D models")
        exportable.setTag("SeriesNumber", "901")
        return [exportable]

    def export(self, exportables):
        """Write the exportables into their folders.

        Returns an error message, or "" on success, as the export dialog expects.
        """
        import Media2DICOM

        logic = Media2DICOM.Media2DICOMLogic()
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(
            slicer.mrmlScene
        )
        for exportable in exportables:
            dataNode = shNode.GetItemDataNode(exportable.subjectHierarchyItemID)
            if dataNode is None:
                return (
                    f"Item {exportable.subjectHierarchyItemID} has no data to export."
                )
            content = Media2DICOM.ExportContent()
            if dataNode.IsA("vtkMRMLSegmentationNode"):
                segmentationNode = dataNode
                segmentation = segmentationNode.GetSegmentation()
                content.segmentationNode = segmentationNode
                segmentIds = [
                    segmentation.GetNthSegmentID(i)
                    for i in range(segmentation.GetNumberOfSegments())
                ]
                try:
                    content.segmentIds = self.segmentIdsToExport(
                        logic, segmentationNode, segmentIds
                    )
                except Media2DICOM.Media2DICOMError as exc:
                    return str(exc)
            else:
                content.modelNodes = [dataNode]

            try:
                seriesNumber = int(exportable.tag("SeriesNumber") or 901)
            except ValueError:
                return (
                    f"Series Number '{exportable.tag('SeriesNumber')}' is not a "
                    "whole number; enter one such as 901."
                )
            folder = os.path.join(
                exportable.directory,
                f"EncapsulatedSTL_{exportable.subjectHierarchyItemID}",
            )
            try:
                logic.export(
                    content,
                    referenceVolumeNode=logic.referenceVolumeForNode(dataNode),
                    outputFolder=folder,
                    firstSeriesNumber=seriesNumber,
                    seriesDescription=exportable.tag("SeriesDescription") or None,
                )
            except Media2DICOM.Media2DICOMError as exc:
                logging.error(
                    "Encapsulated STL export of %s failed: %s", dataNode.GetName(), exc
                )
                return str(exc)
        return ""

    @staticmethod
    def segmentIdsToExport(logic, segmentationNode, segmentIds):
        """Return the non-empty segments, asking before empty ones are left out.

        The export dialog has no list to untick segments in, so an empty
        segment would otherwise stop the whole export.

        Raises
        ------
        Media2DICOMError
            When every segment is empty or the user declines the export.
        """
        from Media2DICOMLib.errors import Media2DICOMError

        emptyIds = logic.emptySegmentIds(segmentationNode, segmentIds)
        if not emptyIds:
            return segmentIds
        name = segmentationNode.GetName()
        if len(emptyIds) == len(segmentIds):
            raise Media2DICOMError(
                f"Every segment of '{name}' is empty, so there is no surface to "
                "export. Paint the segments first."
            )
        segmentation = segmentationNode.GetSegmentation()
        emptyNames = ", ".join(
            segmentation.GetSegment(segmentId).GetName() for segmentId in emptyIds
        )
        logging.warning("Empty segments of %s: %s", name, emptyNames)
        if not slicer.util.confirmYesNoDisplay(
            f"These segments of '{name}' are empty: {emptyNames}.\n\n"
            "Export the other segments without them?",
            windowTitle="Media2DICOM",
        ):
            raise Media2DICOMError(
                f"Export of '{name}' cancelled because of its empty segments."
            )
        return [segmentId for segmentId in segmentIds if segmentId not in emptyIds]


class Media2DICOMPlugin:
    """Hidden module that registers the plugin with the DICOM module."""

    def __init__(self, parent):
        parent.title = "Media2DICOM Plugin"
        parent.categories = ["Developer Tools.DICOM Plugins"]
        parent.contributors = ["Media2DICOM developers"]
        parent.helpText = (
            "Adds Encapsulated STL export of segmentations and models to the "
            "Export to DICOM dialog. The Media2DICOM module has the full panel."
        )
        parent.acknowledgementText = ""
        parent.hidden = True

        # The DICOM module may be created after this module, so the plugin
        # table is created here when it does not exist yet.
        try:
            slicer.modules.dicomPlugins
        except AttributeError:
            slicer.modules.dicomPlugins = {}
        slicer.modules.dicomPlugins["Media2DICOMPlugin"] = Media2DICOMPluginClass
