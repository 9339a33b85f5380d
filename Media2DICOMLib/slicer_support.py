"""Plain-Python helpers of the 3D Slicer module.

The Slicer module (``Media2DICOM/Media2DICOM.py``) gathers inputs from the
scene. The parts of its work that need no Slicer API live here, so they run
and are tested outside Slicer. They cover the packages an export needs, where
the module's resources are, background work with progress and cancellation,
writing the gathered files as DICOM, and the server list, query and sending
that the panel runs in worker threads.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from Media2DICOMLib.errors import Media2DICOMError, PackageError
from Media2DICOMLib.progress import Cancelled

LOGGER = logging.getLogger(__name__)

# Packages that Slicer builds itself. Installing them with pip would replace
# Slicer's own build and break the application.
FORBIDDEN_PACKAGES = frozenset({"vtk", "simpleitk", "itk", "pyside6", "pyqt5"})

# Series Number offsets of the new series of one export, added to the first
# Series Number the user chose, so each kind of content gets its own series.
SERIES_NUMBER_OFFSETS = {"models": 0, "screenshots": 1, "cine": 2, "media": 3}

DEFAULT_SERIES_DESCRIPTIONS = {
    "models": "3D models",
    "screenshots": "Screenshots",
    "cine": "Cine",
    "media": "Images and video",
}

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")



@dataclass(frozen=True)
class Requirement:
    """A package an export needs: the name it is imported by and a pip specifier."""

    import_name: str
    pip_requirement: str
    purpose: str


def pynetdicom_requirement(pydicom_version: str) -> str:
    """Return the pynetdicom specifier that works with the installed pydicom.

    pynetdicom 3 needs pydicom 3, so Slicer 5.10 (pydicom 2.4.4) needs
    pynetdicom 2, and Slicer 5.12 (pydicom 3.0.2) takes pynetdicom 3.
    """
    major = _major_version(pydicom_version)
    if major is None:
        raise PackageError(
            f"The pydicom version '{pydicom_version}' is not a version number, so "
            "the matching pynetdicom cannot be chosen. Reinstall Slicer."
        )
    if major < 3:
        return "pynetdicom>=2.0,<3"
    return "pynetdicom>=3.0"


def requirements_for(
    send: bool,
    video: bool,
    pydicom_version: Optional[str] = None,
) -> List[Requirement]:
    """List the packages an export needs beyond those Slicer bundles.

    Slicer bundles numpy, Pillow and pydicom, which the STL and Secondary
    Capture writers need, so only sending and video decoding add packages.

    Parameters
    ----------
    send : bool
        Objects are sent to a DICOM server (C-STORE with pynetdicom).
    video : bool
        The export contains video files (decoded with PyAV).
    pydicom_version : str, optional
        Installed pydicom version; read from the environment when None.
    """
    requirements = []
    if send:
        version = pydicom_version or _installed_version("pydicom") or "0"
        requirements.append(
            Requirement(
                "pynetdicom", pynetdicom_requirement(version), "sending to servers"
            )
        )
    if video:
        requirements.append(Requirement("av", "av>=11", "decoding video files"))
    check_installable(requirements)
    return requirements


def check_installable(requirements: Sequence[Requirement]) -> None:
    """Raise when a requirement names a package that must never be pip-installed."""
    for requirement in requirements:
        name = re.split(r"[<>=!~ \[;]", requirement.pip_requirement, maxsplit=1)[0]
        if name.lower() in FORBIDDEN_PACKAGES:
            raise PackageError(
                f"{name} is built into 3D Slicer and must not be installed with pip."
            )


def missing_requirements(
    requirements: Sequence[Requirement],
    find_spec: Callable[[str], Any] = importlib.util.find_spec,
    installed_version: Callable[[str], Optional[str]] = None,
) -> List[Requirement]:
    """Return the requirements that are not importable or have the wrong version.

    A pynetdicom whose major version does not match the specifier counts as
    missing, because pynetdicom 3 fails on pydicom 2.
    """
    installed_version = installed_version or _installed_version
    missing = []
    for requirement in requirements:
        if find_spec(requirement.import_name) is None:
            missing.append(requirement)
            continue
        if requirement.import_name == "pynetdicom":
            version = installed_version("pynetdicom") or ""
            if not _version_satisfies_major(version, requirement.pip_requirement):
                missing.append(requirement)
    return missing


def describe_missing(requirements: Sequence[Requirement]) -> str:
    """Describe missing packages in one sentence a user can act on."""
    listing = ", ".join(f"{r.pip_requirement} ({r.purpose})" for r in requirements)
    return (
        f"Missing Python packages: {listing}. Install them from the Python console "
        "with slicer.util.pip_install, or export to a local folder only."
    )


def find_resource(module_dir: Path, relative_path: str) -> Path:
    """Find a file under the module's ``Resources`` folder.

    A built extension has ``Resources`` beside the module file, and a source
    checkout has it one folder up, at the top of the repository.

    Raises
    ------
    FileNotFoundError
        When neither location has the file.
    """
    module_dir = Path(module_dir)
    candidates = [
        module_dir / "Resources" / relative_path,
        module_dir.parent / "Resources" / relative_path,
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"The module resource {relative_path} was found neither in "
        f"{candidates[0].parent} nor in {candidates[1].parent}. Rebuild the "
        "extension or check out the whole repository."
    )


def instance_uids_from_attribute(value: Optional[str]) -> List[str]:
    """Split a ``DICOM.instanceUIDs`` node attribute into SOP Instance UIDs."""
    if not value:
        return []
    return [uid for uid in value.split() if uid]


def frame_time_ms(frames_per_second: float) -> float:
    """Convert a frame rate to the DICOM Frame Time in milliseconds."""
    if not frames_per_second > 0:
        raise Media2DICOMError(
            f"The frame rate {frames_per_second} fps is invalid. Give a rate above 0."
        )
    return 1000.0 / frames_per_second


def series_number_for(first_series_number: int, kind: str) -> int:
    """Return the Series Number of one kind of content in an export."""
    return first_series_number + SERIES_NUMBER_OFFSETS[kind]


def safe_file_stem(name: str, fallback: str = "object") -> str:
    """Turn a segment or node name into a file name stem usable on any system."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return stem[:64] or fallback


def color_to_hex(color: Sequence[float]) -> str:
    """Format an sRGB colour with components 0-1 as ``#RRGGBB``."""
    red, green, blue = (max(0, min(255, round(c * 255))) for c in color[:3])
    return f"#{red:02X}{green:02X}{blue:02X}"


def store_result_line(result) -> str:
    """Describe one C-STORE result in one line for the panel's result list.

    ``result`` is a :class:`Media2DICOMLib.network.StoreResult`.
    """
    name = Path(result.path).name
    if result.stored:
        return f"Sent {name}: {result.message}"
    return f"Not sent {name}: {result.message}"


@dataclass
class ProgressState:
    """Latest progress of a task: steps done, total steps and the step's message."""

    done: int = 0
    total: int = 0
    message: str = ""


class CancellableProgress:
    """A progress callback that records progress and raises when cancelled.

    The panel passes one to the library. ``on_update`` runs after each report
    in the caller's thread. The panel uses it to process Qt events, so the
    window stays responsive and the cancel button can be pressed.
    """

    def __init__(self, on_update: Optional[Callable[[ProgressState], None]] = None):
        self.state = ProgressState()
        self.on_update = on_update
        self._cancel = threading.Event()

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def __call__(self, done: int, total: int, message: str) -> None:
        self.state = ProgressState(done, total, message)
        if self.on_update is not None:
            self.on_update(self.state)
        if self._cancel.is_set():
            raise Cancelled(f"Cancelled during: {message}")


@dataclass
class BackgroundTask:
    """Run a function in a worker thread and keep its result or error.

    The function receives a :class:`CancellableProgress` as ``progress``. The
    panel polls :attr:`finished` from a Qt timer, so the function must not
    touch Qt or the Slicer scene: it is for network work only.
    """

    function: Callable[..., Any]
    arguments: tuple = ()
    name: str = "background task"
    progress: CancellableProgress = field(default_factory=CancellableProgress)
    result: Any = None
    error: Optional[BaseException] = None
    _thread: Optional[threading.Thread] = None

    def start(self) -> "BackgroundTask":
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.result = self.function(*self.arguments, progress=self.progress)
        except BaseException as exc:  # reported to the panel, which shows it
            LOGGER.info("%s stopped: %s", self.name, exc)
            self.error = exc

    @property
    def finished(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the task ends, and return whether it ended."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def cancel(self) -> None:
        self.progress.cancel()


def _installed_version(distribution: str) -> Optional[str]:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _major_version(version: str) -> Optional[int]:
    match = re.match(r"\s*(\d+)", version or "")
    return int(match.group(1)) if match else None


def _version_satisfies_major(version: str, specifier: str) -> bool:
    """Check a version against the ``>=A`` and ``<B`` major bounds of a specifier."""
    major = _major_version(version)
    if major is None:
        return False
    lower = re.search(r">=\s*(\d+)", specifier)
    upper = re.search(r"<\s*(\d+)(?!\.)", specifier)
    if lower and major < int(lower.group(1)):
        return False
    if upper and major >= int(upper.group(1)):
        return False
    return True


# Writing an export


@dataclass
class ExportFiles:
    """Files gathered for one export, ready for the DICOM writers.

    ``models`` contains :class:`~Media2DICOMLib.encapsulated_stl.ModelSpec`
    items, all written into one Encapsulated STL series with one Model Group
    UID. ``screenshots`` are image files, one Secondary Capture each.
    ``cine_frames`` are the frames of one cine, in order, played at
    ``cine_frames_per_second``. ``media_files`` are images (one Secondary
    Capture each) and videos (one cine each).
    """

    models: list = field(default_factory=list)
    screenshots: List[Path] = field(default_factory=list)
    cine_frames: List[Path] = field(default_factory=list)
    cine_frames_per_second: float = 10.0
    cine_label: str = "Cine"
    media_files: List[Path] = field(default_factory=list)

    def is_empty(self) -> bool:
        return not (
            self.models or self.screenshots or self.cine_frames or self.media_files
        )


@dataclass
class WrittenExport:
    """Outcome of one export: the DICOM files, a line describing each, send results."""

    output_folder: Path
    files: List[Path] = field(default_factory=list)
    descriptions: List[str] = field(default_factory=list)
    store_results: list = field(default_factory=list)


def has_video(paths: Sequence) -> bool:
    """Return whether any path has a video file suffix."""
    return any(Path(p).suffix.lower() in VIDEO_SUFFIXES for p in paths)


def write_export(
    source,
    export: ExportFiles,
    output_folder,
    first_series_number: int = 901,
    series_description: Optional[str] = None,
    color_text: bool = True,
    progress=None,
) -> WrittenExport:
    """Write gathered files as DICOM objects in the source study.

    Models go into one Encapsulated STL series. Screenshots, the cine and the
    media files each get their own Secondary Capture series, numbered from
    ``first_series_number`` as :data:`SERIES_NUMBER_OFFSETS` sets. Nothing is
    sent.

    Raises
    ------
    Media2DICOMError
        When there is nothing to write, or a writer rejects an input.
    """
    if export.is_empty():
        raise Media2DICOMError(
            "Nothing to export: give segments, models, files, a screenshot or a cine."
        )
    output_folder = Path(output_folder)
    output_folder.mkdir(parents=True, exist_ok=True)
    result = WrittenExport(output_folder)
    options = (first_series_number, series_description)
    if export.models:
        _write_models(source, export, result, options, color_text, progress)
    if export.screenshots:
        series = new_series_for("screenshots", *options)
        _write_stills(
            source, export.screenshots, series, "Screenshot", result, progress
        )
    if export.cine_frames:
        _write_cine(source, export, result, options, progress)
    if export.media_files:
        _write_media(source, export.media_files, result, options, progress)
    LOGGER.info("Wrote %d object(s) to %s", len(result.files), output_folder)
    return result


def new_series_for(kind: str, first_series_number: int, description: Optional[str]):
    """Build the new series of one kind of content in an export."""
    from Media2DICOMLib.new_series import SeriesInfo

    return SeriesInfo(
        series_number=series_number_for(first_series_number, kind),
        series_description=description or DEFAULT_SERIES_DESCRIPTIONS[kind],
    )


def _write_models(source, export, result, options, color_text, progress) -> None:
    from Media2DICOMLib.encapsulated_stl import encapsulate_models

    series = new_series_for("models", *options)
    paths = encapsulate_models(
        source,
        export.models,
        result.output_folder,
        series=series,
        color_text=color_text,
        progress=progress,
    )
    for spec, path in zip(export.models, paths):
        name = spec.name or Path(spec.path).stem
        result.files.append(Path(path))
        result.descriptions.append(f"Encapsulated STL {name}: {Path(path).name}")


def _write_stills(source, images, series, label, result, progress) -> None:
    from Media2DICOMLib.images import image_files_in
    from Media2DICOMLib.secondary_capture import write_stills

    # write_stills writes one object per file of a folder, so folders are
    # expanded here to keep each description beside its own object.
    expanded = []
    for image in images:
        is_folder = isinstance(image, (str, os.PathLike)) and Path(image).is_dir()
        expanded.extend(image_files_in(Path(image)) if is_folder else [image])
    written = write_stills(
        source, expanded, result.output_folder, series, progress=progress
    )
    for image, item in zip(expanded, written):
        result.files.append(item.path)
        result.descriptions.append(f"{label} {Path(image).name}: {item.path.name}")


def _write_cine(source, export, result, options, progress) -> None:
    from Media2DICOMLib.images import load_frames
    from Media2DICOMLib.new_series import new_uid
    from Media2DICOMLib.secondary_capture import write_secondary_capture

    series = new_series_for("cine", *options)
    uid = new_uid()
    written = write_secondary_capture(
        source,
        load_frames(list(export.cine_frames)),
        result.output_folder / f"SC_{uid}.dcm",
        series,
        sop_instance_uid=uid,
        frame_time_ms=frame_time_ms(export.cine_frames_per_second),
        progress=progress,
    )
    result.files.append(written.path)
    result.descriptions.append(
        f"{export.cine_label} ({written.number_of_frames} frames): {written.path.name}"
    )


def _write_media(source, media_files, result, options, progress) -> None:
    from Media2DICOMLib.new_series import new_uid
    from Media2DICOMLib.secondary_capture import write_secondary_capture

    # Images and videos share one series, whose Instance Numbers continue from
    # the stills to the videos.
    series = new_series_for("media", *options)
    paths = [Path(f) for f in media_files]
    images = [p for p in paths if p.suffix.lower() not in VIDEO_SUFFIXES]
    videos = [p for p in paths if p.suffix.lower() in VIDEO_SUFFIXES]
    if images:
        _write_stills(source, images, series, "Image", result, progress)
    if not videos:
        return

    from Media2DICOMLib.video import read_video

    for video in videos:
        uid = new_uid()
        written = write_secondary_capture(
            source,
            read_video(video),
            result.output_folder / f"SC_{uid}.dcm",
            series,
            sop_instance_uid=uid,
            progress=progress,
        )
        result.files.append(written.path)
        result.descriptions.append(
            f"Video {video.name} ({written.number_of_frames} frames): "
            f"{written.path.name}"
        )


# Servers, query and sending, for the panel's worker threads


def find_series(
    settings, server_name: str, patient_id: str = "", accession_number: str = ""
) -> List[Dict[str, str]]:
    """Find the series of the studies that match a Patient ID or Accession Number.

    Runs a study-level C-FIND, then a series-level C-FIND per study. Returns
    one dict per series with the attributes the panel shows and the UIDs
    :func:`retrieve_series` needs.

    Raises
    ------
    Media2DICOMError
        When neither filter is given, the server is unknown or a query fails.
    """
    from Media2DICOMLib import query

    if not patient_id and not accession_number:
        raise Media2DICOMError(
            "Give a Patient ID or an Accession Number to search for, so the query "
            "does not list every study on the server."
        )
    server = settings.server(server_name)
    options = {"calling_aet": settings.ae_title, "timeouts": settings.timeouts}
    studies = query.find(
        server,
        "STUDY",
        patient_id=patient_id or None,
        accession_number=accession_number or None,
        **options,
    )
    rows = []
    for study in studies:
        study_uid = study.value("StudyInstanceUID")
        for series in query.find(
            server, "SERIES", study_instance_uid=study_uid, **options
        ):
            rows.append(
                {
                    "PatientName": study.value("PatientName"),
                    "PatientID": study.value("PatientID"),
                    "StudyDate": study.value("StudyDate"),
                    "AccessionNumber": study.value("AccessionNumber"),
                    "Modality": series.value("Modality"),
                    "SeriesDescription": series.value("SeriesDescription"),
                    "StudyInstanceUID": study_uid,
                    "SeriesInstanceUID": series.value("SeriesInstanceUID"),
                }
            )
    return rows


QUERY_COLUMNS = (
    "PatientName",
    "StudyDate",
    "AccessionNumber",
    "Modality",
    "SeriesDescription",
)


def retrieve_series(
    settings, server_name: str, row: Dict[str, str], accession_number=None
):
    """Retrieve the source series of a row from :func:`find_series` by C-GET."""
    from Media2DICOMLib import query

    return query.retrieve_source_series(
        settings.server(server_name),
        row["StudyInstanceUID"],
        row["SeriesInstanceUID"],
        method="get",
        calling_aet=settings.ae_title,
        timeouts=settings.timeouts,
        accession_number=accession_number,
    )


def server_values(settings, name: str) -> Dict[str, Any]:
    """Return the fields of a saved server that the panel's server form edits."""
    server = settings.server(name)
    return {
        "name": server.name,
        "description": server.description,
        "host": server.host,
        "port": server.port,
        "called_aet": server.called_aet,
    }


def save_server(
    settings_path, original_name: Optional[str], values: Dict[str, Any]
) -> str:
    """Add a server to the settings file, or replace ``original_name``.

    Other fields of a replaced server (TLS, DICOMweb) are kept. Returns the
    saved name.

    Raises
    ------
    SettingsError
        When a value is invalid or the name is taken.
    """
    from Media2DICOMLib.settings import (
        Server,
        copy_server,
        load_settings,
        save_settings,
        validate_server,
    )

    settings = load_settings(settings_path)
    if original_name:
        server = copy_server(settings.server(original_name), **values)
        validate_server(server)
        settings.replace_server(original_name, server)
    else:
        server = Server(**values)
        validate_server(server)
        settings.add_server(server)
    save_settings(settings, settings_path)
    return server.name


def send_through_outbox(settings, server_name: str, paths, progress=None) -> list:
    """Send files through the outbox, where unsent objects stay for a retry."""
    from Media2DICOMLib.outbox import Outbox

    outbox = Outbox(settings.cache_path())
    return outbox.send_files(
        settings.server(server_name),
        paths,
        calling_aet=settings.ae_title,
        timeouts=settings.timeouts,
        progress=progress,
    )
