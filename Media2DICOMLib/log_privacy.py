"""Keep patient data out of pydicom's log records.

pydicom 3 logs an invalid element value at WARNING ("Invalid value for VR DA:
'1923.08.17'"), and invalid values in a source study are often a birth date or
a Patient ID from an old scanner. The filter below withholds the value and
keeps the rest of the message, so administrators still see that a source was
odd. It is installed on the "pydicom" logger when the library is imported.
"""

from __future__ import annotations

import logging
import re

_INVALID_VALUE = re.compile(r"^(Invalid value for VR [A-Z]{2})\b.*", re.DOTALL)


class WithholdInvalidValues(logging.Filter):
    """Replace the value in pydicom's invalid-value messages with a placeholder."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True
        match = _INVALID_VALUE.match(message)
        if match:
            record.msg = match.group(1) + " (value withheld: it may be patient data)"
            record.args = ()
        return True


def install() -> None:
    """Add the filter to the "pydicom" logger once."""
    logger = logging.getLogger("pydicom")
    if not any(isinstance(f, WithholdInvalidValues) for f in logger.filters):
        logger.addFilter(WithholdInvalidValues())
