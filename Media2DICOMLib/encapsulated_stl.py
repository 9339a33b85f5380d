"""Encapsulated STL Storage objects in the source study.

:func:`write_encapsulated_stl` writes one model; :func:`encapsulate_models`
writes several into one new M3D series with a shared Model Group UID. The STL
bytes stream from the input file into the DICOM file in chunks, so a model of
hundreds of megabytes needs only a few megabytes of memory.
"""

from __future__ import annotations

import logging
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

from pydicom.dataset import Dataset
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence as DicomSequence

from Media2DICOMLib.color import rgb_bytes, srgb_to_dicom_lab
from Media2DICOMLib.errors import Media2DICOMError, STLError
from Media2DICOMLib.new_series import (
    SeriesInfo,
    base_dataset,
    finish_character_set,
    new_uid,
    save_dataset,
)
from Media2DICOMLib.progress import ProgressCallback, progress_or_default
from Media2DICOMLib.source_study import SourceSeries
from Media2DICOMLib.stl import StlModel, open_stl

LOGGER = logging.getLogger(__name__)

ENCAPSULATED_STL_STORAGE = "1.2.840.10008.5.1.4.1.1.104.3"
MODALITY_M3D = "M3D"
MIME_TYPE_STL = "model/stl"
_ENCAPSULATED_DOCUMENT_TAG = 0x00420011

# Concept Name by source modality, from CID 7061 "3D Manufacturing Model
# Concepts". Other modalities get an empty Concept Name Code Sequence (Type 2).
_MODEL_CONCEPTS = {
    "CT": ("85040-4", "LN", "CT 3D CAM model"),
    "MR": ("85041-2", "LN", "MR 3D CAM model"),
    "US": ("129018", "DCM", "US 3D CAM model"),
}
_SOURCE_IMAGE_PURPOSE = ("121324", "DCM", "Source image")

# Colours for models given none, in order. Names that match a structure below
# get its usual display colour instead (values as 3D Slicer's generic anatomy
# colour table shows those structures).
DEFAULT_PALETTE = (
    (0.867, 0.510, 0.396),
    (0.945, 0.839, 0.569),
    (0.808, 0.431, 0.329),
    (0.357, 0.659, 0.824),
    (0.565, 0.933, 0.565),
    (0.784, 0.600, 0.922),
    (0.992, 0.871, 0.400),
    (0.400, 0.800, 0.800),
)
_STRUCTURE_COLORS = {
    "liver": (221, 130, 101),
    "spine": (241, 214, 145),
    "bone": (241, 214, 145),
    "vertebra": (241, 214, 145),
    "skull": (241, 214, 145),
    "heart": (206, 110, 84),
    "kidney": (185, 102, 83),
    "lung": (197, 165, 145),
    "artery": (216, 101, 79),
    "aorta": (224, 97, 76),
    "vein": (0, 151, 206),
    "tumor": (144, 238, 144),
    "skin": (177, 122, 101),
}

RGB = Tuple[float, float, float]


@dataclass
class ModelSpec:
    """One model to encapsulate and how a viewer should show it.

    ``color`` is sRGB with components 0.0 to 1.0; ``opacity`` is 0.0 to 1.0.
    Both are optional: without a colour one is chosen from the name or the
    palette, and without an opacity viewers show the model opaque.
    """

    path: Union[str, os.PathLike]
    name: Optional[str] = None
    color: Optional[RGB] = None
    opacity: Optional[float] = None
    space: Optional[str] = None


def default_color(name: str, index: int) -> RGB:
    """Pick a display colour for a model that was given none."""
    lowered = name.lower()
    for structure, color in _STRUCTURE_COLORS.items():
        if structure in lowered:
            return tuple(c / 255.0 for c in color)
    return DEFAULT_PALETTE[index % len(DEFAULT_PALETTE)]


def build_dataset(
    source: SourceSeries,
    series: SeriesInfo,
    model: StlModel,
    *,
    document_title: Optional[str] = None,
    color: Optional[RGB] = None,
    opacity: Optional[float] = None,
    model_group_uid: Optional[str] = None,
    color_text: bool = True,
    sop_instance_uid: Optional[str] = None,
) -> Dataset:
    """Build every attribute of an Encapsulated STL object but the document."""
    dataset = base_dataset(
        source,
        series,
        ENCAPSULATED_STL_STORAGE,
        MODALITY_M3D,
        sop_instance_uid=sop_instance_uid,
    )

    frame_of_reference_uid = source.frame_of_reference_uid
    if not frame_of_reference_uid:
        # The Frame of Reference is Type 1. A new UID records that the model is
        # not registered to the source images.
        frame_of_reference_uid = new_uid()
        LOGGER.warning(
            "The source series %s has no Frame of Reference UID; the model gets a "
            "new one and will not be registered to the source images",
            source.series_instance_uid,
        )
    dataset.FrameOfReferenceUID = frame_of_reference_uid
    dataset.PositionReferenceIndicator = source.position_reference_indicator

    dataset.AcquisitionDateTime = series.created.strftime("%Y%m%d%H%M%S")
    dataset.BurnedInAnnotation = "NO"
    dataset.DocumentTitle = (document_title or model.name)[:1024]
    dataset.ConceptNameCodeSequence = _concept_name(source.modality)
    dataset.MIMETypeOfEncapsulatedDocument = MIME_TYPE_STL
    if source.instances:
        dataset.SourceInstanceSequence = _source_instances(source)
        dataset.ReferencedSeriesSequence = _referenced_series(source)
    dataset.EncapsulatedDocumentLength = model.byte_length

    dataset.MeasurementUnitsCodeSequence = DicomSequence([_code("mm", "UCUM", "mm")])
    if model_group_uid:
        dataset.ModelGroupUID = model_group_uid
    if color is not None:
        dataset.RecommendedDisplayCIELabValue = list(srgb_to_dicom_lab(color))
        if color_text:
            red, green, blue = rgb_bytes(color)
            dataset.ContentDescription = f"ColorRGB({red}, {green}, {blue})"
    if opacity is not None:
        if not 0.0 <= opacity <= 1.0:
            raise Media2DICOMError(
                f"Opacity {opacity} of model {model.name} is outside 0.0 to 1.0."
            )
        dataset.RecommendedPresentationOpacity = float(opacity)

    finish_character_set(dataset, source)
    return dataset


def write_encapsulated_stl(
    source: SourceSeries,
    model: StlModel,
    path: Union[str, os.PathLike],
    series: SeriesInfo,
    *,
    document_title: Optional[str] = None,
    color: Optional[RGB] = None,
    opacity: Optional[float] = None,
    model_group_uid: Optional[str] = None,
    color_text: bool = True,
    sop_instance_uid: Optional[str] = None,
    progress: Optional[ProgressCallback] = None,
) -> Path:
    """Write one Encapsulated STL object to ``path``.

    The file appears only when complete: it is written under a temporary name
    and renamed, so an STL that turns out to be cut short or to hold NaN
    vertices leaves nothing behind.

    Raises
    ------
    STLError
        When the STL data is invalid; no file is left at ``path``.
    """
    path = Path(path)
    dataset = build_dataset(
        source,
        series,
        model,
        document_title=document_title,
        color=color,
        opacity=opacity,
        model_group_uid=model_group_uid,
        color_text=color_text,
        sop_instance_uid=sop_instance_uid,
    )
    report = progress_or_default(progress)
    partial = path.with_name(path.name + ".part")
    try:
        with open(partial, "wb") as handle:
            _write_streamed(handle, dataset, model, report)
        os.replace(partial, path)
    except BaseException:
        _remove_quietly(partial)
        raise
    LOGGER.info(
        "Wrote Encapsulated STL %s (%d triangles) to %s",
        dataset.SOPInstanceUID,
        model.triangle_count,
        path,
    )
    return path


def encapsulate_models(
    source: SourceSeries,
    specs: Sequence[Union[ModelSpec, str, os.PathLike]],
    output_dir: Union[str, os.PathLike],
    *,
    series: Optional[SeriesInfo] = None,
    model_group_uid: Optional[str] = None,
    color_text: bool = True,
    progress: Optional[ProgressCallback] = None,
) -> List[Path]:
    """Write each model as an Encapsulated STL object in one new M3D series.

    All models are checked before any is written, so one broken STL stops the
    export with nothing half done. The models share ``model_group_uid`` (a new
    one when not given), so viewers treat them as one assembly.

    Returns the paths written, in the order of ``specs``.
    """
    specs = [s if isinstance(s, ModelSpec) else ModelSpec(s) for s in specs]
    if not specs:
        raise Media2DICOMError("No STL files were given to encapsulate.")
    models = [open_stl(spec.path, space=spec.space) for spec in specs]

    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    series = series or SeriesInfo(series_description="3D models")
    group_uid = model_group_uid or new_uid()
    total = sum(model.byte_length for model in models)
    report = progress_or_default(progress)
    done = 0
    written = []
    for index, (spec, model) in enumerate(zip(specs, models)):
        name = spec.name or model.name
        color = spec.color if spec.color is not None else default_color(name, index)

        def model_progress(part, _total, message, offset=done):
            report(offset + part, total, message)

        path = _unused_path(output / _file_name(series, name))
        write_encapsulated_stl(
            source,
            model,
            path,
            series,
            document_title=name,
            color=color,
            opacity=spec.opacity,
            model_group_uid=group_uid,
            color_text=color_text,
            progress=model_progress,
        )
        done += model.byte_length
        written.append(path)
    report(total, total, "Encapsulated STL written")
    return written


def _write_streamed(handle, dataset: Dataset, model: StlModel, report) -> None:
    """Write the dataset with the STL bytes streamed into Encapsulated Document."""
    before = Dataset()
    after = Dataset()
    for element in dataset:
        target = before if element.tag < _ENCAPSULATED_DOCUMENT_TAG else after
        target.add(element)
    save_dataset(before, handle)

    length = model.byte_length
    padded_length = length + (length % 2)
    handle.write(struct.pack("<HH2sHI", 0x0042, 0x0011, b"OB", 0, padded_length))
    written = 0
    message = f"Encapsulating {model.name}"
    for chunk in model.iter_chunks():
        handle.write(chunk)
        written += len(chunk)
        report(written, length, message)
    if written != length:
        raise STLError(
            f"The STL file {model.path} yielded {written} bytes instead of "
            f"{length}; it may have changed while it was read. Export it again."
        )
    if length % 2:
        handle.write(b"\x00")

    file_like = DicomFileLike(handle)
    file_like.is_little_endian = True
    file_like.is_implicit_VR = False
    write_dataset(file_like, after, parent_encoding=_encoding_of(dataset))


def _encoding_of(dataset: Dataset):
    charset = dataset.get("SpecificCharacterSet")
    return charset if charset else "ISO_IR 6"


def _concept_name(modality: str) -> DicomSequence:
    concept = _MODEL_CONCEPTS.get(modality.upper())
    return DicomSequence([_code(*concept)] if concept else [])


def _source_instances(source: SourceSeries) -> DicomSequence:
    items = []
    for instance in source.instances:
        item = Dataset()
        item.ReferencedSOPClassUID = instance.sop_class_uid
        item.ReferencedSOPInstanceUID = instance.sop_instance_uid
        item.PurposeOfReferenceCodeSequence = DicomSequence(
            [_code(*_SOURCE_IMAGE_PURPOSE)]
        )
        items.append(item)
    return DicomSequence(items)


def _referenced_series(source: SourceSeries) -> DicomSequence:
    """Build the Common Instance Reference entry for the source instances."""
    series_item = Dataset()
    series_item.SeriesInstanceUID = source.series_instance_uid
    references = []
    for instance in source.instances:
        item = Dataset()
        item.ReferencedSOPClassUID = instance.sop_class_uid
        item.ReferencedSOPInstanceUID = instance.sop_instance_uid
        references.append(item)
    series_item.ReferencedInstanceSequence = DicomSequence(references)
    return DicomSequence([series_item])


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _file_name(series: SeriesInfo, name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "model"
    return (
        f"M3D_{series.series_number}_{series.next_instance_number:03d}_{safe[:48]}.dcm"
    )


def _unused_path(path: Path) -> Path:
    """Return ``path``, or the first free ``stem_N`` beside it, so no file is overwritten."""
    candidate = path
    number = 2
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}_{number}{path.suffix}")
        number += 1
    return candidate


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        LOGGER.warning("Could not remove the partial file %s: %s", path, exc)


__all__ = [
    "ENCAPSULATED_STL_STORAGE",
    "ModelSpec",
    "build_dataset",
    "default_color",
    "encapsulate_models",
    "write_encapsulated_stl",
]
