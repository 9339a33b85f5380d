"""Display colour of a model: sRGB to DICOM CIELab.

DICOM stores a recommended display colour as CIELab relative to the D50 white
point, scaled as the ICC profile connection space scales it (PS3.3 C.10.7.1.1).
L* 0 to 100 maps to 0 to 65535. a* and b* -128 to 127 map to 0 to 65535, with
0 at 0x8080.
"""

from __future__ import annotations

from typing import Sequence, Tuple

# Linear sRGB to CIE XYZ relative to D50: the IEC 61966-2-1 sRGB matrix combined
# with Bradford adaptation from D65 to D50, to seven decimals.
_SRGB_TO_XYZ_D50 = (
    (0.4360747, 0.3850649, 0.1430804),
    (0.2225045, 0.7168786, 0.0606169),
    (0.0139322, 0.0971045, 0.7141733),
)
# The D50 white that matrix maps sRGB white to (its row sums), so white and
# greys get a* = b* = 0 exactly.
_D50_WHITE = tuple(sum(row) for row in _SRGB_TO_XYZ_D50)


def srgb_to_lab(rgb: Sequence[float]) -> Tuple[float, float, float]:
    """Convert an sRGB colour with components 0.0 to 1.0 to CIELab (D50)."""
    for component in rgb:
        if not 0.0 <= component <= 1.0:
            raise ValueError(
                f"Colour component {component} is outside 0.0 to 1.0; give sRGB "
                "components as fractions (divide 0-255 values by 255)."
            )
    linear = [_srgb_to_linear(c) for c in rgb]
    xyz_d50 = _multiply(_SRGB_TO_XYZ_D50, linear)
    fx, fy, fz = (_lab_f(value / white) for value, white in zip(xyz_d50, _D50_WHITE))
    return 116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)


def lab_to_dicom(lab: Sequence[float]) -> Tuple[int, int, int]:
    """Scale CIELab to the three unsigned 16-bit values DICOM stores."""
    lightness, a_star, b_star = lab
    encoded_l = round(min(max(lightness, 0.0), 100.0) * 65535.0 / 100.0)
    encoded_a = round((min(max(a_star, -128.0), 127.0) + 128.0) * 65535.0 / 255.0)
    encoded_b = round((min(max(b_star, -128.0), 127.0) + 128.0) * 65535.0 / 255.0)
    return encoded_l, encoded_a, encoded_b


def srgb_to_dicom_lab(rgb: Sequence[float]) -> Tuple[int, int, int]:
    """Convert sRGB fractions to the Recommended Display CIELab Value."""
    return lab_to_dicom(srgb_to_lab(rgb))


def rgb_bytes(rgb: Sequence[float]) -> Tuple[int, int, int]:
    """Return the 0-255 integers of sRGB fractions, as ``ColorRGB(R, G, B)`` shows."""
    return tuple(int(round(c * 255.0)) for c in rgb)


def parse_color(text: str) -> Tuple[float, float, float]:
    """Parse a colour given as ``#RRGGBB``, ``R,G,B`` (0-255) or ``r,g,b`` (0-1).

    Three values that are all at most 1.0 and contain a decimal point are taken
    as fractions; otherwise the values are 0-255 integers.
    """
    value = text.strip()
    if value.startswith("#") and len(value) == 7:
        try:
            return tuple(int(value[i : i + 2], 16) / 255.0 for i in (1, 3, 5))
        except ValueError:
            pass
    parts = [p.strip() for p in value.split(",")]
    if len(parts) == 3:
        try:
            numbers = [float(p) for p in parts]
        except ValueError:
            numbers = None
        if numbers is not None:
            fractions = any("." in p for p in parts) and all(n <= 1.0 for n in numbers)
            scaled = numbers if fractions else [n / 255.0 for n in numbers]
            if all(0.0 <= n <= 1.0 for n in scaled):
                return tuple(scaled)
    raise ValueError(
        f"Invalid colour {text!r}: use #RRGGBB, R,G,B with 0-255 integers, or "
        "r,g,b with fractions 0.0-1.0."
    )


def _srgb_to_linear(component: float) -> float:
    if component <= 0.04045:
        return component / 12.92
    return ((component + 0.055) / 1.055) ** 2.4


def _lab_f(ratio: float) -> float:
    epsilon = 216.0 / 24389.0
    kappa = 24389.0 / 27.0
    if ratio > epsilon:
        return ratio ** (1.0 / 3.0)
    return (kappa * ratio + 16.0) / 116.0


def _multiply(matrix, vector):
    return [sum(m * v for m, v in zip(row, vector)) for row in matrix]
