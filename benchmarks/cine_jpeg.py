"""Encode generated RGB cine frames to JPEG Baseline with Media2DICOM or Pillow.

Usage: ``python benchmarks/cine_jpeg.py {media2dicom,pillow} FRAMES OUT``

Both encoders get the same frames from a generator: a pool of distinct
1920×1080 frames, made before the clock starts and cycled, so memory for the
input does not grow with the frame count. The script prints one JSON line with
the frame count and the wall and CPU seconds (all threads) spent encoding and
writing, which excludes
interpreter start, imports, reading the source series and making the pool.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import inputs

REPOSITORY = Path(__file__).resolve().parents[1]
ROWS, COLUMNS = 1080, 1920
POOL_SIZE = 8
# The product's default JPEG quality, and the 4:2:2 chroma subsampling that
# YBR_FULL_422 declares (Pillow calls 4:2:2 "subsampling=1").
QUALITY = 90
PILLOW_SUBSAMPLING = 1
FRAME_TIME_MS = 40.0


def frames(count: int, pool):
    for index in range(count):
        yield pool[index % len(pool)]


def pillow_encoder(target: Path):
    """Return a function that encodes frames in one thread into one file."""
    from PIL import Image

    def encode(frame_iterator) -> None:
        with open(target, "wb") as handle:
            for frame in frame_iterator:
                buffer = io.BytesIO()
                Image.fromarray(frame).save(
                    buffer, "JPEG", quality=QUALITY, subsampling=PILLOW_SUBSAMPLING
                )
                handle.write(buffer.getvalue())

    return encode


def media2dicom_encoder(target: Path):
    """Return a function that writes one Multi-frame True Color SC object."""
    # PYTHONPATH, when set, chooses the checkout to measure; else this one.
    sys.path.append(str(REPOSITORY))
    from Media2DICOMLib.new_series import SeriesInfo
    from Media2DICOMLib.secondary_capture import write_secondary_capture
    from Media2DICOMLib.source_study import read_source_series

    source = read_source_series(inputs.source_series_files())

    def encode(frame_iterator) -> None:
        write_secondary_capture(
            source,
            frame_iterator,
            target,
            SeriesInfo(series_description="Benchmark cine"),
            quality=QUALITY,
            frame_time_ms=FRAME_TIME_MS,
        )

    return encode


ENCODERS = {"media2dicom": media2dicom_encoder, "pillow": pillow_encoder}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("encoder", choices=sorted(ENCODERS))
    parser.add_argument("frames", type=int, help="number of frames to encode")
    parser.add_argument("target", type=Path, help="output file")
    args = parser.parse_args()

    encode = ENCODERS[args.encoder](args.target)
    pool = [inputs.synthetic_frame(index, ROWS, COLUMNS) for index in range(POOL_SIZE)]
    start = time.perf_counter()
    cpu_start = time.process_time()
    encode(frames(args.frames, pool))
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    print(
        json.dumps(
            {"frames": args.frames, "seconds": seconds, "cpu_seconds": cpu_seconds}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
