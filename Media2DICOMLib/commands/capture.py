"""``media2dicom capture``: screenshots, cine and video to Secondary Capture objects."""

from __future__ import annotations

from pathlib import Path

from Media2DICOMLib.color import parse_color, rgb_bytes
from Media2DICOMLib.commands.source_and_send import (
    add_send_arguments,
    check_send_target,
    add_settings_option,
    add_source_arguments,
    send_if_requested,
    source_from_args,
    warn_if_output_not_empty,
)
from Media2DICOMLib.errors import Media2DICOMError, UsageError
from Media2DICOMLib.jpeg import DEFAULT_QUALITY, TRANSFER_SYNTAX_NAMES
from Media2DICOMLib.progress import TerminalProgress

DEFAULT_OUTPUT = "media2dicom-output"
DEFAULT_SERIES_NUMBER = 902


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "capture",
        help="write screenshots, cine frames or a video as Secondary Capture "
        "objects in the source study",
        description=(
            "Write images as Multi-frame Secondary Capture objects in one new series "
            "of the source study, with the source series' Modality. Each image "
            "becomes one object; with --cine the images (or the numbered images "
            "of a folder) become the frames of one cine object; with --video a "
            "video file becomes one cine object."
        ),
    )
    parser.add_argument(
        "images",
        nargs="*",
        type=Path,
        metavar="IMAGE",
        help="PNG, JPEG, BMP or TIFF files, or folders of them (numeric order)",
    )
    add_source_arguments(parser)
    add_send_arguments(parser)
    add_settings_option(parser)

    parser.add_argument(
        "--video",
        type=Path,
        help="video file (MP4, MOV, AVI, MKV) to write as one cine object",
    )
    parser.add_argument(
        "--cine",
        action="store_true",
        help="write the images as the frames of one cine object (needs --frame-rate)",
    )
    parser.add_argument(
        "--frame-rate",
        type=float,
        help="frames per second of the cine (Frame Time is 1000 / rate ms)",
    )

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
        default=DEFAULT_SERIES_NUMBER,
        help=f"Series Number of the new series (default: {DEFAULT_SERIES_NUMBER})",
    )
    parser.add_argument(
        "--series-description",
        help="Series Description of the new series (default: 'Screenshots', "
        "'Cine' or 'Video')",
    )

    parser.add_argument(
        "--transfer-syntax",
        choices=list(TRANSFER_SYNTAX_NAMES),
        default="jpeg-baseline",
        help="encoding of the pixels (default: jpeg-baseline)",
    )
    parser.add_argument(
        "--quality",
        type=int,
        default=DEFAULT_QUALITY,
        help=f"JPEG quality 1-100 for the lossy syntaxes (default: {DEFAULT_QUALITY})",
    )
    parser.add_argument(
        "--background",
        default="#000000",
        help="colour that transparent pixels are flattened onto: #RRGGBB, R,G,B "
        "(0-255) or r,g,b (0.0-1.0) (default: black)",
    )
    parser.add_argument(
        "--burned-in-annotation",
        choices=("yes", "no"),
        nargs="?",
        const="yes",
        default="yes",
        help="whether the pixels show text that identifies the patient, such as a "
        "workstation's name and ID overlay (default: yes, because screenshots "
        "and photos of other screens often do; say 'no' only when you have "
        "checked every frame)",
    )

    parser.add_argument(
        "--max-frames",
        type=int,
        help="reject a video with more frames than this, after --subsample",
    )
    parser.add_argument(
        "--subsample",
        default=None,
        help="keep every N-th video frame, or 'auto' for the smallest N that fits "
        "--max-frames",
    )

    parser.add_argument(
        "--size-warning-mb",
        type=float,
        default=256,
        help="warn about objects larger than this many MiB (default: 256)",
    )
    parser.add_argument(
        "--size-limit-mb",
        type=float,
        default=4000,
        help="reject objects larger than this many MiB (default: 4000)",
    )

    parser.set_defaults(handler=run)


def run(args) -> int:
    from Media2DICOMLib.images import load_frames
    from Media2DICOMLib.new_series import SeriesInfo
    from Media2DICOMLib.secondary_capture import (
        MIB,
        write_secondary_capture,
        write_stills,
    )
    mode = _check_mode(args)
    options = _writer_options(args, MIB)
    check_send_target(args)
    source = source_from_args(args)
    default_description = {"stills": "Screenshots", "cine": "Cine", "video": "Video"}
    series = SeriesInfo(
        series_number=args.series_number,
        series_description=args.series_description or default_description[mode],
    )
    warn_if_output_not_empty(args.output)
    args.output.mkdir(parents=True, exist_ok=True)

    if mode == "stills":
        written = write_stills(source, args.images, args.output, series, **options)
    elif mode == "cine":
        frames = load_frames(args.images, options["background"])
        written = [
            write_secondary_capture(
                source,
                frames,
                args.output / f"SC_cine_{series.series_instance_uid}.dcm",
                series,
                frame_time_ms=1000.0 / args.frame_rate,
                **options,
            )
        ]
    else:
        from Media2DICOMLib.video import read_video

        video = read_video(args.video, args.max_frames, _subsample(args.subsample))
        written = [
            write_secondary_capture(
                source,
                video,
                args.output / f"SC_video_{series.series_instance_uid}.dcm",
                series,
                **options,
            )
        ]

    for item in written:
        print(
            f"{item.path}  {item.number_of_frames} frame(s)  "
            f"{item.size_bytes / MIB:.1f} MiB"
        )
    return send_if_requested(args, [item.path for item in written])


def _check_mode(args) -> str:
    if args.video and args.images:
        raise UsageError(
            "Give either image files or --video, not both: a video becomes its own "
            "object."
        )
    if not args.video and not args.images:
        raise UsageError("Give image files, a folder of frames or --video.")
    if args.video:
        return "video"
    if args.cine:
        if not args.frame_rate or args.frame_rate <= 0:
            raise UsageError(
                "--cine needs --frame-rate, the frames per second (for example "
                "--frame-rate 10)."
            )
        return "cine"
    if args.frame_rate:
        raise UsageError("--frame-rate applies only with --cine.")
    return "stills"


def _writer_options(args, mib: int) -> dict:
    try:
        background = rgb_bytes(parse_color(args.background))
    except ValueError as exc:
        raise Media2DICOMError(f"Invalid --background value: {exc}") from exc
    return {
        "transfer_syntax": TRANSFER_SYNTAX_NAMES[args.transfer_syntax],
        "quality": args.quality,
        "burned_in_annotation": args.burned_in_annotation.upper(),
        "background": background,
        "size_warning_bytes": int(args.size_warning_mb * mib),
        "size_limit_bytes": int(args.size_limit_mb * mib),
        "progress": TerminalProgress(),
    }


def _subsample(value):
    if value is None or value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise Media2DICOMError(
            f"Invalid --subsample value {value!r}: give a whole number or 'auto'."
        ) from None
