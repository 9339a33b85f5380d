"""Exception family of the library.

Every message names the file, server or attribute involved and states what
the user can do about it, so front ends print it as it is, without a traceback.
"""


class Media2DICOMError(Exception):
    """Base class of every error the library raises on purpose."""


class SourceStudyError(Media2DICOMError):
    """The source DICOM files are missing, unreadable or ambiguous."""


class STLError(Media2DICOMError):
    """An STL file is invalid, truncated or not STL at all."""


class ImageInputError(Media2DICOMError):
    """An image, cine or video input cannot be turned into frames."""


class ObjectTooLargeError(Media2DICOMError):
    """A DICOM object would exceed the upload limit."""


class NetworkError(Media2DICOMError):
    """An association or DIMSE exchange with a server failed."""


class SettingsError(Media2DICOMError):
    """The settings file or a value in it is invalid."""


class EncodingError(Media2DICOMError):
    """A frame cannot be encoded or decoded with the chosen transfer syntax."""


class LabelMapError(Media2DICOMError):
    """A label map or segmentation file is missing, unreadable or not oriented."""


class PackageError(Media2DICOMError):
    """A Python package an export needs is missing and was not installed."""


class OutboxError(Media2DICOMError):
    """An outbox entry is missing or its state file is damaged."""


class UsageError(Media2DICOMError):
    """Command-line options are missing or contradict each other."""
