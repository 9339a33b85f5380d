"""Attributes shared by every object written into the source study.

Each writer (Encapsulated STL, Secondary Capture) starts from
:func:`base_dataset`, which fills the Patient, General Study, series, equipment
and SOP Common attributes, then adds its own IOD modules.
"""

from __future__ import annotations

import datetime
import platform
import uuid
from dataclasses import dataclass, field
from typing import Optional

import pydicom
from pydicom.charset import python_encoding
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from Media2DICOMLib import __version__
from Media2DICOMLib.source_study import SourceSeries

MANUFACTURER = "Media2DICOM"
MODEL_NAME = "Media2DICOM"
# A UID derived from the product name, so it is the same on every install.
IMPLEMENTATION_CLASS_UID = "2.25." + str(
    uuid.uuid5(uuid.NAMESPACE_URL, "media2dicom:implementation").int
)
IMPLEMENTATION_VERSION_NAME = ("M2D_" + __version__.replace(".", "_"))[:16]


def new_uid() -> str:
    """Return a new UID under the 2.25 (UUID-derived) root."""
    return generate_uid(prefix=None)


@dataclass
class SeriesInfo:
    """The new series that one export writes into the source study.

    Every object of one export shares a :class:`SeriesInfo`, so they land in
    one series with increasing Instance Numbers.
    """

    series_number: int = 901
    series_description: str = ""
    series_instance_uid: str = field(default_factory=new_uid)
    next_instance_number: int = 1
    created: datetime.datetime = field(default_factory=datetime.datetime.now)

    def take_instance_number(self) -> int:
        number = self.next_instance_number
        self.next_instance_number += 1
        return number


def base_dataset(
    source: SourceSeries,
    series: SeriesInfo,
    sop_class_uid: str,
    modality: str,
    sop_instance_uid: Optional[str] = None,
) -> Dataset:
    """Build the attributes common to every new object.

    Covers the Patient and General Study modules (copied from the source), the
    General Series attributes of the new series, General and Enhanced General
    Equipment describing this software, and SOP Common.
    """
    now = series.created
    dataset = source.patient_study_dataset()

    dataset.SOPClassUID = sop_class_uid
    dataset.SOPInstanceUID = sop_instance_uid or new_uid()
    dataset.InstanceCreationDate = now.strftime("%Y%m%d")
    dataset.InstanceCreationTime = now.strftime("%H%M%S")
    dataset.Modality = modality
    dataset.SeriesInstanceUID = series.series_instance_uid
    dataset.SeriesNumber = series.series_number
    dataset.SeriesDate = now.strftime("%Y%m%d")
    dataset.SeriesTime = now.strftime("%H%M%S")
    if series.series_description:
        dataset.SeriesDescription = series.series_description[:64]
    dataset.InstanceNumber = series.take_instance_number()
    dataset.ContentDate = now.strftime("%Y%m%d")
    dataset.ContentTime = now.strftime("%H%M%S")

    dataset.Manufacturer = MANUFACTURER
    dataset.ManufacturerModelName = MODEL_NAME
    dataset.DeviceSerialNumber = _device_serial_number()
    dataset.SoftwareVersions = __version__
    return dataset


def finish_character_set(dataset: Dataset, source: SourceSeries) -> None:
    """Set Specific Character Set so every text value can be encoded.

    The source's character set is kept when pydicom supports it and it can encode
    every text value of the new object (segment names, titles and descriptions
    come from the user). Otherwise UTF-8 (``ISO_IR 192``) is used.
    """
    source_charset = source.specific_character_set
    texts = list(_text_values(dataset))
    if all(text.isascii() for text in texts):
        if source_charset and _charset_known(source_charset):
            dataset.SpecificCharacterSet = source_charset
        elif "SpecificCharacterSet" in dataset:
            del dataset.SpecificCharacterSet
        return
    if source_charset and _charset_known(source_charset):
        if _can_encode(texts, source_charset):
            dataset.SpecificCharacterSet = source_charset
            return
    dataset.SpecificCharacterSet = "ISO_IR 192"


def file_meta_for(dataset: Dataset, transfer_syntax_uid: str) -> FileMetaDataset:
    """Build the File Meta Information of a new object."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax_uid
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta


def save_dataset(dataset: Dataset, path, transfer_syntax_uid=ExplicitVRLittleEndian):
    """Write ``dataset`` as a DICOM file with preamble and File Meta Information."""
    dataset.file_meta = file_meta_for(dataset, transfer_syntax_uid)
    _set_encoding(dataset, transfer_syntax_uid)
    if _PYDICOM_MAJOR >= 3:
        dataset.save_as(path, enforce_file_format=True)
    else:
        dataset.save_as(path, write_like_original=False)


def _set_encoding(dataset: Dataset, transfer_syntax_uid) -> None:
    if _PYDICOM_MAJOR < 3:
        dataset.is_little_endian = True
        dataset.is_implicit_VR = transfer_syntax_uid == pydicom.uid.ImplicitVRLittleEndian


_PYDICOM_MAJOR = int(pydicom.__version__.split(".")[0])


def _device_serial_number() -> str:
    # The software has no serial number, so the host that ran it identifies the
    # "device", which is what a reader of the equipment attributes wants.
    return (platform.node() or "unknown-host")[:64]


def _text_values(dataset: Dataset):
    for element in dataset.iterall():
        if element.VR in ("PN", "LO", "SH", "ST", "LT", "UT", "UC") and element.value:
            values = element.value if element.VM > 1 else [element.value]
            for value in values:
                yield str(value)


def _charset_known(charset) -> bool:
    values = charset if isinstance(charset, (list, tuple)) else [charset]
    values = [v for v in values if v]
    if not values:
        return True
    return all(v in python_encoding for v in values)


def _can_encode(texts, charset) -> bool:
    values = charset if isinstance(charset, (list, tuple)) else [charset]
    if len([v for v in values if v]) > 1:
        # Code extensions (ISO 2022) switch character sets inside one value;
        # pydicom encodes them, so trust the source's declaration.
        return True
    encoding = python_encoding[values[0]] if values and values[0] else "ascii"
    try:
        for text in texts:
            text.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True
