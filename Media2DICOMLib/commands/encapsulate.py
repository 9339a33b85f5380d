"""``media2dicom encapsulate``: STL files to Encapsulated STL objects."""

from __future__ import annotations

from pathlib import Path

from Media2DICOMLib.color import parse_color
from Media2DICOMLib.commands.source_and_send import (
    add_send_arguments,
    check_send_target,
    add_settings_option,
    add_source_arguments,
    send_if_requested,
    source_from_args,
    warn_if_output_not_empty,
)
from Media2DICOMLib.errors import Media2DICOMError
from Media2DICOMLib.new_series import SeriesInfo
from Media2DICOMLib.progress import TerminalProgress

DEFAULT_OUTPUT = "media2dicom-output"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "encapsulate",
        help="write STL files as Encapsulated STL objects in the source study",
        description=(
            "Write each STL file as an Encapsulated STL object in one new M3D series "
            "of the source study. The models share one Model Group UID. Objects are "
            "written to the output folder; add --send to store them on a server."
        ),
    )
    parser.add_argument("stl", nargs="+", type=Path, help="binary or ASCII STL files")
    add_source_arguments(parser)
    add_send_arguments(parser)
    add_settings_option(parser)
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path(DEFAULT_OUTPUT),
        help=f"folder for the DICOM files (default: ./{DEFAULT_OUTPUT})",
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
        help="Series Description of the new series (default: '3D models')",
    )
    parser.add_argument(
        "--model-group-uid",
        help="Model Group UID shared by the models (default: a new UID)",
    )
    parser.add_argument(
        "--name",
        action="append",
        default=[],
        metavar="FILE=NAME",
        help="Document Title of a model, keyed by its file name without .stl "
        "(default: the file name); repeatable",
    )
    parser.add_argument(
        "--color",
        action="append",
        default=[],
        metavar="MODEL=COLOR",
        help="display colour of a model, keyed by its file name without .stl: "
        "#RRGGBB, R,G,B (0-255) or r,g,b (0.0-1.0); repeatable "
        "(default: a colour chosen from the name or a palette)",
    )
    parser.add_argument(
        "--opacity",
        action="append",
        default=[],
        metavar="MODEL=OPACITY",
        help="display opacity of a model from 0.0 (transparent) to 1.0 (opaque); "
        "repeatable (default: not written, which viewers show as opaque)",
    )
    parser.add_argument(
        "--no-color-text",
        action="store_true",
        help="do not write 'ColorRGB(R, G, B)' into Content Description",
    )
    parser.add_argument(
        "--space",
        choices=("LPS", "RAS"),
        help="coordinate system of STL files whose header does not say "
        "(default: LPS, the DICOM patient system)",
    )
    parser.set_defaults(handler=run)


def run(args) -> int:
    from Media2DICOMLib.encapsulated_stl import ModelSpec, encapsulate_models

    names = _keyed_values(args.name, "--name", str)
    colors = _keyed_values(args.color, "--color", parse_color)
    opacities = _keyed_values(args.opacity, "--opacity", _parse_opacity)
    stems = {path.stem for path in args.stl}
    for option, values in (("--name", names), ("--color", colors), ("--opacity", opacities)):
        unknown = sorted(set(values) - stems)
        if unknown:
            raise Media2DICOMError(
                f"{option} names {', '.join(unknown)}, which is not among the STL "
                f"files ({', '.join(sorted(stems))})."
            )

    check_send_target(args)
    source = source_from_args(args)
    specs = [
        ModelSpec(
            path,
            name=names.get(path.stem),
            color=colors.get(path.stem),
            opacity=opacities.get(path.stem),
            space=args.space,
        )
        for path in args.stl
    ]
    series = SeriesInfo(
        series_number=args.series_number,
        series_description=args.series_description,
    )
    warn_if_output_not_empty(args.output)
    paths = encapsulate_models(
        source,
        specs,
        args.output,
        series=series,
        model_group_uid=args.model_group_uid,
        color_text=not args.no_color_text,
        progress=TerminalProgress(),
    )
    print_written(paths)
    return send_if_requested(args, paths)


def print_written(paths) -> None:
    import pydicom

    for path in paths:
        # Deferred reading skips the STL bytes, which can be hundreds of MB.
        header = pydicom.dcmread(path, defer_size=1024)
        color = header.get("ContentDescription", "")
        print(f"{path}  {header.get('DocumentTitle', '')}  {color}".rstrip())


def _keyed_values(entries, option: str, convert):
    values = {}
    for entry in entries:
        key, separator, text = entry.partition("=")
        if not separator or not key:
            raise Media2DICOMError(
                f"Invalid {option} value {entry!r}: write MODEL=VALUE, where MODEL "
                "is the STL file name without .stl."
            )
        try:
            values[key] = convert(text)
        except ValueError as exc:
            raise Media2DICOMError(f"Invalid {option} value for {key}: {exc}")
    return values


def _parse_opacity(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"opacity {text} is outside 0.0 to 1.0")
    return value

