"""Source series: the DICOM study that new objects are added to.

The source series supplies the patient, study, Frame of Reference and modality
of every object this library writes, and its instances are listed in the Source
Instance Sequence. Only headers are read: pixel data is never loaded.
"""

from __future__ import annotations

import io
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import pydicom
import pydicom.charset
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from Media2DICOMLib.errors import SourceStudyError

LOGGER = logging.getLogger(__name__)

# Patient, Patient Study and General Study attributes copied unchanged from the
# source, so the new objects sit in the same patient and study.
PATIENT_STUDY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "TypeOfPatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "EthnicGroup",
    "PatientComments",
    "PatientSpeciesDescription",
    "PatientBreedDescription",
    "ResponsiblePerson",
    "ResponsibleOrganization",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "ReferringPhysicianIdentificationSequence",
    "StudyID",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "StudyDescription",
    "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy",
    "ProcedureCodeSequence",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
)

# Type 2 attributes of the Patient and General Study modules: written empty when
# the source lacks them.
TYPE2_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)

# Attributes of the source header that the writers read besides the Patient and
# Study ones. Each is decoded once by read_source_series, so a damaged value
# raises SourceStudyError there, not a pydicom error in a writer.
_USED_KEYWORDS = (
    "SpecificCharacterSet",
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "FrameOfReferenceUID",
    "PositionReferenceIndicator",
    "BodyPartExamined",
    "Laterality",
)

# Tags read from every file while scanning a folder; the chosen series' first
# file is then read again in full (still without pixel data).
_SCAN_TAGS = [
    "SpecificCharacterSet",
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "SeriesDescription",
    "InstanceNumber",
]

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class SourceInstance:
    """One instance of the source series, as listed in Source Instance Sequence."""

    sop_class_uid: str
    sop_instance_uid: str
    path: Optional[Path] = None
    instance_number: Optional[int] = None


@dataclass(frozen=True)
class SeriesSummary:
    """One series found while scanning, for choosing among several."""

    series_instance_uid: str
    study_instance_uid: str
    modality: str
    series_description: str
    instance_count: int

    def describe(self) -> str:
        description = self.series_description or "(no description)"
        return (
            f"{self.series_instance_uid}  {self.modality or '??'}  "
            f"{description}  {self.instance_count} instance(s)"
        )


@dataclass
class SourceSeries:
    """Header of a source series and the list of its instances.

    ``header`` is one instance's dataset without pixel data; every attribute
    the writers copy is taken from it. ``accession_number`` overrides the
    source's Accession Number when not None.
    """

    header: Dataset
    instances: list = field(default_factory=list)
    accession_number: Optional[str] = None

    def __post_init__(self) -> None:
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
            if not str(self.header.get(keyword, "")).strip():
                raise SourceStudyError(
                    f"The source header has no {keyword}, so new objects cannot "
                    "be placed in its study. Choose another source series."
                )

    @property
    def study_instance_uid(self) -> str:
        return str(self.header.StudyInstanceUID)

    @property
    def series_instance_uid(self) -> str:
        return str(self.header.SeriesInstanceUID)

    @property
    def modality(self) -> str:
        return str(self.header.get("Modality", "") or "")

    @property
    def frame_of_reference_uid(self) -> Optional[str]:
        value = self.header.get("FrameOfReferenceUID")
        return str(value) if value else None

    @property
    def position_reference_indicator(self) -> str:
        return str(self.header.get("PositionReferenceIndicator", "") or "")

    @property
    def body_part_examined(self) -> Optional[str]:
        value = self.header.get("BodyPartExamined")
        return str(value) if value else None

    @property
    def specific_character_set(self):
        return self.header.get("SpecificCharacterSet")

    def patient_study_dataset(self) -> Dataset:
        """Build the Patient and General Study attributes for a new object."""
        dataset = Dataset()
        for keyword in PATIENT_STUDY_KEYWORDS:
            if keyword in self.header:
                element = self.header[keyword]
                dataset.add_new(element.tag, element.VR, element.value)
        for keyword in TYPE2_KEYWORDS:
            if keyword not in dataset:
                setattr(dataset, keyword, "")
        if self.accession_number is not None:
            dataset.AccessionNumber = self.accession_number
        return dataset


def read_source_series(
    paths: Union[PathLike, Sequence[PathLike]],
    series_instance_uid: Optional[str] = None,
    accession_number: Optional[str] = None,
) -> SourceSeries:
    """Read the source series from DICOM files or folders.

    Parameters
    ----------
    paths : path or sequence of paths
        DICOM files, or folders searched recursively. Files that are not DICOM
        are skipped with a log message.
    series_instance_uid : str, optional
        The series to use. Without it the files must hold exactly one series.
    accession_number : str, optional
        Accession Number written into new objects in place of the source's.

    Raises
    ------
    SourceStudyError
        When no DICOM file is found, the requested series is absent, or more
        than one series is present and none was chosen. The message lists the
        series that were found.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = list(_iter_files(Path(p) for p in paths))
    if not files:
        names = ", ".join(str(p) for p in paths)
        raise SourceStudyError(f"No files found in the source path {names}.")

    headers = []
    skipped = []
    for path in files:
        header = _read_scan_header(path)
        if header is None:
            skipped.append(path)
        else:
            headers.append((path, header))
    if skipped:
        LOGGER.info("Skipped %d file(s) that are not DICOM instances", len(skipped))
    if not headers:
        shown = ", ".join(str(p) for p in skipped[:5])
        raise SourceStudyError(
            f"None of the {len(files)} source file(s) is a DICOM instance with a "
            f"Series Instance UID ({shown}). Point the source at a DICOM series."
        )

    chosen_uid = _choose_series(headers, series_instance_uid)
    members = [(p, h) for p, h in headers if str(h.SeriesInstanceUID) == chosen_uid]
    members.sort(key=lambda item: (_instance_number(item[1]) or 0, str(item[0])))

    first_path = members[0][0]
    try:
        header = _read_dataset(first_path)
    except Exception as exc:  # pydicom raises many types on damaged files
        raise SourceStudyError(f"Failed to read the DICOM file {first_path}: {exc}")
    _check_header(header, first_path)

    instances = [
        SourceInstance(
            sop_class_uid=str(h.SOPClassUID),
            sop_instance_uid=str(h.SOPInstanceUID),
            path=p,
            instance_number=_instance_number(h),
        )
        for p, h in members
    ]
    LOGGER.info(
        "Source series %s: modality %s, %d instance(s)",
        chosen_uid,
        header.get("Modality", ""),
        len(instances),
    )
    return SourceSeries(header, instances, accession_number)


def summarize_series(headers: Iterable[Dataset]) -> list:
    """Group scanned headers into one :class:`SeriesSummary` per series."""
    counts = Counter()
    firsts = {}
    for header in headers:
        uid = str(header.SeriesInstanceUID)
        counts[uid] += 1
        firsts.setdefault(uid, header)
    return [
        SeriesSummary(
            series_instance_uid=uid,
            study_instance_uid=_decoded_text(firsts[uid], "StudyInstanceUID"),
            modality=_decoded_text(firsts[uid], "Modality"),
            series_description=_decoded_text(firsts[uid], "SeriesDescription"),
            instance_count=counts[uid],
        )
        for uid in counts
    ]


def _choose_series(headers, series_instance_uid: Optional[str]) -> str:
    summaries = summarize_series(h for _, h in headers)
    found = {s.series_instance_uid for s in summaries}
    listing = "\n".join("  " + s.describe() for s in summaries)
    if series_instance_uid:
        if series_instance_uid not in found:
            raise SourceStudyError(
                f"Series Instance UID {series_instance_uid} is not among the source "
                f"files. Series found:\n{listing}"
            )
        return series_instance_uid
    if len(summaries) > 1:
        raise SourceStudyError(
            f"The source files hold {len(summaries)} series; choose one by its "
            f"Series Instance UID (--series-uid on the command line). Series "
            f"found:\n{listing}"
        )
    return summaries[0].series_instance_uid


def _iter_files(paths: Iterable[Path]):
    for path in paths:
        if path.is_dir():
            for root, dirs, names in os.walk(path):
                dirs.sort()
                for name in sorted(names):
                    yield Path(root) / name
        elif path.is_file():
            yield path
        else:
            raise SourceStudyError(
                f"The source path {path} does not exist. Give a DICOM file or folder."
            )


class _BoundedReader(io.BufferedReader):
    """A file reader that never reads past the end of the file.

    pydicom 2.4 and 3.0 call read() with the length written in the element, and
    Python allocates that many bytes first. A damaged length of 0xFFFFFFF0 in a
    small file would then allocate 4 GiB, so each read is cut to what is left.
    """

    def __init__(self, raw, size: int) -> None:
        super().__init__(raw)
        self.size = size

    def read(self, size: Optional[int] = -1) -> bytes:
        if size is not None and size > 0:
            size = min(size, max(0, self.size - self.tell()))
        return super().read(size)


def _read_dataset(path: Path, specific_tags: Optional[list] = None) -> Dataset:
    """Read the header of ``path`` without pixel data, accepting odd files.

    Some writers omit the 128-byte preamble but keep the "DICM" prefix, which
    pydicom would take for a data element, so such a file gets a blank preamble.
    """
    with _BoundedReader(io.FileIO(path), os.path.getsize(path)) as file:
        if file.read(4) == b"DICM":
            source = io.BytesIO(bytes(128) + b"DICM" + file.read())
        else:
            file.seek(0)
            source = file
        return pydicom.dcmread(
            source, stop_before_pixels=True, force=True, specific_tags=specific_tags
        )


def _read_scan_header(path: Path) -> Optional[Dataset]:
    """Read the scan tags of one file, or return None when it is not DICOM."""
    try:
        header = _read_dataset(path, _SCAN_TAGS)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        LOGGER.debug("Skipped %s: %s", path, exc)
        return None
    except Exception as exc:  # pydicom raises many types on arbitrary bytes
        LOGGER.debug("Skipped %s: %s", path, exc)
        return None
    try:
        if not header.get("SeriesInstanceUID") or not header.get("SOPInstanceUID"):
            return None
        if not header.get("SOPClassUID"):
            return None
    except Exception as exc:  # values of a forced read of junk may fail to decode
        LOGGER.debug("Skipped %s: %s", path, exc)
        return None
    return header


def _check_header(header: Dataset, path: Path) -> None:
    """Decode every attribute the writers copy, so damage shows here.

    pydicom converts a value when it is first read and checks it again when it
    is copied, so a damaged value would otherwise fail later in a writer. An
    invalid optional attribute (such as Patient's Weight "70,5") is removed
    with a warning. An invalid Type 2 attribute or UID raises SourceStudyError.
    Neither message shows the value, because it may be patient data.
    """
    for keyword in PATIENT_STUDY_KEYWORDS + _USED_KEYWORDS:
        try:
            if keyword in header:
                # A copy validates the value the way patient_study_dataset does.
                element = header[keyword]
                str(DataElement(element.tag, element.VR, element.value).value)
        except Exception as exc:  # pydicom raises many types on damaged values
            if keyword in TYPE2_KEYWORDS or keyword in _USED_KEYWORDS:
                raise SourceStudyError(
                    f"The DICOM file {path} has an invalid {keyword} value that "
                    f"cannot be decoded ({type(exc).__name__}), so new objects "
                    "cannot copy it. Choose another source series or repair the "
                    "file."
                ) from exc
            del header[keyword]
            LOGGER.warning(
                "The DICOM file %s has an invalid %s value (%s); new objects "
                "leave it out",
                path,
                keyword,
                type(exc).__name__,
            )

    charset = header.get("SpecificCharacterSet")
    charsets = [charset] if isinstance(charset, str) else list(charset or [])
    unknown = [
        name
        for name in charsets
        if name and name not in pydicom.charset.python_encoding
    ]
    if unknown:
        LOGGER.warning(
            "The DICOM file %s has the unknown Specific Character Set %s; its text "
            "is decoded with pydicom's default (ISO 8859-1)",
            path,
            "\\".join(unknown),
        )


def _instance_number(header: Dataset) -> Optional[int]:
    try:
        value = header.get("InstanceNumber")
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _decoded_text(header: Dataset, keyword: str) -> str:
    try:
        return str(header.get(keyword, "") or "")
    except Exception:  # an undecodable value under a wrong character set
        return "(undecodable)"
