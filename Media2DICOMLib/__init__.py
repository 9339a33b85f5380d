"""Media2DICOM: 3D models, screenshots, cine and video as DICOM in the source study.

The library has no dependency on 3D Slicer; the Slicer module and the
``media2dicom`` command line are thin front ends over it.
"""

__version__ = "0.1.0"

from Media2DICOMLib import log_privacy  # noqa: E402
from Media2DICOMLib.errors import Media2DICOMError  # noqa: E402,F401

log_privacy.install()

__all__ = ["Media2DICOMError", "__version__"]
