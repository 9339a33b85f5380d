"""Convert an ASCII STL file to binary STL with Media2DICOM or numpy-stl.

Usage: ``python benchmarks/ascii_to_binary.py {media2dicom,numpy-stl} IN OUT``

The benchmark runs this script once per converter, so both pay the same
interpreter start and differ only in how they read and write the mesh.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]


def convert_with_media2dicom(source: Path, target: Path) -> None:
    # PYTHONPATH, when set, chooses the checkout to measure; else this one.
    sys.path.append(str(REPOSITORY))
    from Media2DICOMLib.stl import open_stl

    model = open_stl(source)
    with open(target, "wb") as handle:
        for chunk in model.iter_chunks():
            handle.write(chunk)


def convert_with_numpy_stl(source: Path, target: Path) -> None:
    from stl import Mode
    from stl.mesh import Mesh

    # speedups=False selects numpy-stl's pure-Python ASCII reader. Its Cython
    # reader is used only when the optional compiled module is installed.
    mesh = Mesh.from_file(str(source), speedups=False)
    mesh.save(str(target), mode=Mode.BINARY)


CONVERTERS = {
    "media2dicom": convert_with_media2dicom,
    "numpy-stl": convert_with_numpy_stl,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("converter", choices=sorted(CONVERTERS))
    parser.add_argument("source", type=Path, help="ASCII STL file to read")
    parser.add_argument("target", type=Path, help="binary STL file to write")
    args = parser.parse_args()
    CONVERTERS[args.converter](args.source, args.target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
