"""``media2dicom mesh``: label maps and Slicer segmentations to STL surfaces."""

from __future__ import annotations

from pathlib import Path

from Media2DICOMLib.commands.source_and_send import (
    add_send_arguments,
    check_send_target,
    add_settings_option,
    add_source_arguments,
    send_if_requested,
    source_from_args,
)
from Media2DICOMLib.labelmap import DEFAULT_SMOOTHING_ITERATIONS
from Media2DICOMLib.progress import TerminalProgress

DEFAULT_OUTPUT = "media2dicom-surfaces"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "mesh",
        help="mesh a label map or Slicer .seg.nrrd into one STL surface per segment",
        description=(
            "Mesh each segment of a label map NRRD or a 3D Slicer .seg.nrrd into a "
            "closed surface in LPS millimetres and write it as binary STL. Segment "
            "names and colours come from the .seg.nrrd header, and a plain label "
            "map gives one surface per label value. The output folder also gets "
            "segments.json with each file's name, label value and colour. With "
            "--source, the surfaces are also written as Encapsulated STL objects "
            "in the source study, with those names and colours."
        ),
    )

    parser.add_argument("labelmap", type=Path, help="label map .nrrd or .seg.nrrd")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path(DEFAULT_OUTPUT),
        help=f"folder for the STL files (default: ./{DEFAULT_OUTPUT})",
    )
    parser.add_argument(
        "--segment",
        action="append",
        default=[],
        metavar="NAME",
        help="mesh only this segment, given by name, segment ID or label value; "
        "repeatable (default: every segment)",
    )
    parser.add_argument(
        "--smoothing-iterations",
        type=int,
        default=DEFAULT_SMOOTHING_ITERATIONS,
        help="smoothing passes over the surface; 0 keeps the voxel steps "
        f"(default: {DEFAULT_SMOOTHING_ITERATIONS})",
    )

    # Encapsulation of the surfaces into the source study, when a source is given.
    add_source_arguments(parser)
    add_send_arguments(parser)
    add_settings_option(parser)
    parser.add_argument(
        "--dicom-output",
        type=Path,
        help="folder for the Encapsulated STL objects (default: OUTPUT/dicom)",
    )
    parser.add_argument(
        "--series-number",
        type=int,
        default=901,
        help="Series Number of the new M3D series (default: 901)",
    )
    parser.add_argument(
        "--series-description",
        default="3D models",
        help="Series Description of the new M3D series (default: '3D models')",
    )

    parser.set_defaults(handler=run)


def run(args) -> int:
    from Media2DICOMLib.errors import Media2DICOMError
    from Media2DICOMLib.labelmap import mesh_labelmap_file

    if args.smoothing_iterations < 0:
        raise Media2DICOMError(
            f"--smoothing-iterations is {args.smoothing_iterations}; give 0 or more."
        )
    check_send_target(args)
    # The source is read first, so a wrong --source fails before any meshing.
    source = None
    if args.source or args.source_server:
        source = source_from_args(args)
    surfaces = mesh_labelmap_file(
        args.labelmap,
        args.output,
        segment_names=args.segment or None,
        smoothing_iterations=args.smoothing_iterations,
        progress=TerminalProgress(),
    )
    for surface in surfaces:
        color = (
            "#{:02X}{:02X}{:02X}".format(*(round(c * 255) for c in surface.color))
            if surface.color
            else "-"
        )
        print(
            f"{surface.path}  {surface.name}  label {surface.label_value}  "
            f"{color}  {surface.triangle_count} triangles"
        )

    if source is not None:
        return _encapsulate(args, source, surfaces)
    if args.send:
        raise Media2DICOMError(
            "--send needs a source study: give --source or --source-server so the "
            "surfaces are encapsulated first."
        )
    return 0


def _encapsulate(args, source, surfaces) -> int:
    from Media2DICOMLib.commands.encapsulate import print_written
    from Media2DICOMLib.encapsulated_stl import ModelSpec, encapsulate_models
    from Media2DICOMLib.new_series import SeriesInfo
    specs = [
        ModelSpec(surface.path, name=surface.name, color=surface.color, space="LPS")
        for surface in surfaces
    ]
    series = SeriesInfo(
        series_number=args.series_number,
        series_description=args.series_description,
    )
    paths = encapsulate_models(
        source,
        specs,
        args.dicom_output or args.output / "dicom",
        series=series,
        progress=TerminalProgress(),
    )
    print_written(paths)
    return send_if_requested(args, paths)
