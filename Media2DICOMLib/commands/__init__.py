"""Subcommands of the ``media2dicom`` command line, one module each."""
