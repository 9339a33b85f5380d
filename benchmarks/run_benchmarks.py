"""Benchmark Media2DICOM against the tools people would otherwise use.

Usage::

    python benchmarks/run_benchmarks.py [--sizes small,medium,large] [--runs N]

Inputs are generated into a scratch folder. Every tool runs once as a
warm-up and then ``--runs`` times, alternating with the other tools of the
case. Whole-process wall time, CPU time and peak resident memory of each run
are measured, and the medians, ratios, machine, versions and exact command
lines are written to ``docs/benchmarks.md``. Peers (DCMTK storescp, Orthanc)
run on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import cases
import end_to_end
import report
from measure import ToolResult

REPOSITORY = cases.REPOSITORY
PAGE = REPOSITORY / "docs" / "benchmarks.md"
SIZES = ("small", "medium", "large")


class Case:
    """One benchmark case: how to run one size, and its targets."""

    def __init__(
        self,
        key: str,
        title: str,
        run: Callable,
        rate_unit: str,
        assess: Callable,
        description: str,
    ) -> None:
        self.key = key
        self.title = title
        self.run = run
        self.rate_unit = rate_unit
        self.assess = assess
        self.description = description


def _product(size_result) -> Optional[ToolResult]:
    found = size_result.by_role("product")
    return found[0] if found and found[0].ok else None


def _role(size_result, role: str) -> Optional[ToolResult]:
    found = size_result.by_role(role)
    return found[0] if found and found[0].ok else None


def _verdict(met: bool) -> str:
    return "met" if met else "**missed**"


def _ratio_target(
    size_result, name: str, limit: float, text: str, reference_role="reference"
):
    product = _product(size_result)
    reference = _role(size_result, reference_role)
    if product is None or reference is None:
        return [f"| {text} | not measured (a tool failed) | – |"]
    value = product.median(name) / reference.median(name)
    return [f"| {text} | {value:.2f} | {_verdict(value <= limit)} |"]


def _memory_target(size_result, limit_bytes: float, text: str):
    product = _product(size_result)
    if product is None:
        return [f"| {text} | not measured (the product failed) | – |"]
    peak = product.median("peak_rss_bytes")
    return [f"| {text} | {peak / 1e6:.0f} MB | {_verdict(peak <= limit_bytes)} |"]


def assess_encapsulate(size_results) -> List[str]:
    large = size_results[-1]
    lines = _ratio_target(
        large, "wall_seconds", 1.0, f"{large.size}: wall ÷ stl2dcm ≤ 1.0"
    )
    lines += _memory_target(large, 100e6, f"{large.size}: peak memory ≤ 100 MB")
    product = _product(large)
    copy = _role(large, "baseline")
    if product and copy:
        value = product.median("wall_seconds") / copy.median("wall_seconds")
        lines.append(
            f"| {large.size}: wall ÷ cp (lower bound, no target) | {value:.2f} | – |"
        )
    return lines


def assess_ascii(size_results) -> List[str]:
    large = size_results[-1]
    product = _product(large)
    reference = _role(large, "reference")
    if product is None or reference is None:
        return [f"| {large.size}: throughput ≥ 3 × numpy-stl | not measured | – |"]
    speedup = reference.median("wall_seconds") / product.median("wall_seconds")
    lines = [
        f"| {large.size}: throughput ÷ numpy-stl ≥ 3 | {speedup:.2f} | "
        f"{_verdict(speedup >= 3.0)} |"
    ]
    for size_result in size_results:
        product = _product(size_result)
        if product is None:
            continue
        output_bytes = size_result.extra.get("output_bytes")
        peak = product.median("peak_rss_bytes")
        if output_bytes:
            lines.append(
                f"| {size_result.size}: peak memory − binary output size "
                f"(bounded: should not grow faster than the output) | "
                f"{(peak - output_bytes) / 1e6:.0f} MB (peak {peak / 1e6:.0f} MB, "
                f"output {output_bytes / 1e6:.0f} MB) | – |"
            )
    return lines


def store_assessment(wall_limit: float) -> Callable:
    """Return the assessment of a C-STORE case with the given wall-time limit."""

    def assess(size_results) -> List[str]:
        large = size_results[-1]
        text = f"{large.size}: wall ÷ storescu (TCP_NODELAY=1) ≤ {wall_limit:g}"
        lines = _ratio_target(large, "wall_seconds", wall_limit, text)
        lines += _memory_target(large, 100e6, f"{large.size}: peak memory < 100 MB")
        return lines

    return assess


def assess_cine(size_results) -> List[str]:
    large = size_results[-1]
    product = _product(large)
    reference = _role(large, "reference")
    rates = large.inner_rates
    if product is None or reference is None or product.tool.label not in rates:
        return [f"| {large.size}: frames/s ÷ Pillow loop ≥ 1.6 | not measured | – |"]

    speedup = rates[product.tool.label] / rates[reference.tool.label]
    lines = [
        f"| {large.size}: frames/s ÷ Pillow loop ≥ 1.6 | {speedup:.2f} | "
        f"{_verdict(speedup >= 1.6)} |"
    ]

    cores = large.extra.get("cores", {}).get(product.tool.label)
    if cores is not None:
        lines.append(
            f"| {large.size}: both cores used (CPU ÷ wall of the encoding loop ≥ 1.5) | "
            f"{cores:.2f} | {_verdict(cores >= 1.5)} |"
        )

    peaks = []
    for size_result in size_results:
        result = _product(size_result)
        if result is not None:
            peaks.append((size_result.size, result.median("peak_rss_bytes")))
    if len(peaks) > 1:
        growth = peaks[-1][1] / peaks[0][1]
        text = ", ".join(f"{size} {peak / 1e6:.0f} MB" for size, peak in peaks)
        lines.append(
            f"| peak memory independent of frame count (largest ÷ smallest ≤ 1.1) | "
            f"{growth:.2f} ({text}) | {_verdict(growth <= 1.1)} |"
        )
    return lines


CASES = [
    Case(
        "encapsulate",
        "1. Encapsulate a binary STL into the source study",
        cases.encapsulate_stl,
        "MB/s",
        assess_encapsulate,
        "The product writes an Encapsulated STL object into a new series of the "
        "source study (the real 3-slice CT when the shared test data is present, "
        "else pydicom's CT_small). DCMTK stl2dcm does the same with `+st`, "
        "`-an` and millimetre units. `cp` copies the STL file and is the lower "
        "bound for any tool that reads and writes every byte once. Rate is "
        "STL megabytes per second of wall time.",
    ),
    Case(
        "ascii",
        "2. Convert an ASCII STL to binary",
        cases.ascii_to_binary,
        "MB/s",
        assess_ascii,
        "Both converters run through `benchmarks/ascii_to_binary.py`, which "
        "reads the ASCII STL and writes a binary STL. numpy-stl runs with "
        "`speedups=False`, its pure-Python ASCII reader. Its optional compiled "
        "reader is not installed here, so its default is the same reader. Rate "
        "is ASCII megabytes per second of wall time.",
    ),
    Case(
        "store-large",
        "3a. C-STORE one large object to DCMTK storescp",
        cases.store_large,
        "MB/s",
        store_assessment(1.5),
        "One Encapsulated STL object (written by stl2dcm) is sent over loopback "
        "to DCMTK storescp, which writes it to disk. DCMTK 3.6.7 storescu does "
        "not propose Encapsulated STL Storage by default, so it gets a "
        "configuration file profile that proposes it with Explicit VR Little "
        "Endian. Both tools send the same file.",
    ),
    Case(
        "store-many",
        "3b. C-STORE many small objects in one association",
        cases.store_many,
        "objects/s",
        store_assessment(2.0),
        "Small Encapsulated STL objects (1,000 triangles each) are sent from "
        "one folder in one association to DCMTK storescp.",
    ),
    Case(
        "cine",
        "4. Encode 1920×1080 RGB cine frames to JPEG Baseline",
        cases.cine_jpeg,
        "frames/s",
        assess_cine,
        "Frames come from a generator in `benchmarks/cine_jpeg.py`: eight distinct "
        "synthetic frames (gradients, a moving disc and light noise), made before "
        "the clock starts and cycled. The product writes one Multi-frame True "
        "Color Secondary Capture object with JPEG Baseline frames (quality 90, "
        "4:2:2). The reference is a loop in one thread that encodes the same "
        "frames with Pillow at the same quality and subsampling into one file. "
        "Rate is frames per second of the encoding loop as the script times it, "
        "without interpreter start and set-up; wall, CPU and memory are for the "
        "whole process.",
    ),
]


def run_case(case: Case, context: cases.Context, sizes: List[str]) -> list:
    size_results = []
    for size in sizes:
        context.log(f"== {case.title}: {size}")
        started = time.monotonic()
        # Other work on a shared machine shows in the load average.
        load = os.getloadavg()[0]
        size_result = case.run(context, size)
        size_result.extra["load"] = (load, os.getloadavg()[0])
        size_results.append(size_result)
        context.log(f"   done in {time.monotonic() - started:.0f} s")
    return size_results


PAGE_TEMPLATE = """\
# Benchmarks

Media2DICOM against the tools people would otherwise use, on the same
generated inputs in the same run: DCMTK 3.6.7 `stl2dcm`, `storescu` and
`storescp`, numpy-stl's ASCII reader, a one-thread Pillow JPEG loop and a
plain `cp`. Rerun from the repository root with:

    python benchmarks/run_benchmarks.py --sizes small,medium,large --runs 5

The script needs GNU time, DCMTK and Orthanc (Debian packages `time`,
`dcmtk` and `orthanc`) and the project's Python dependencies. It generates
every input into a temporary folder, so nothing large is kept in the
repository, and it rewrites only the part of this page between the two
markers. The run below states how long it took. `--cases` runs a subset,
`--checkout DIR` measures another checkout (for example one with a patch
applied) and `--help` lists the rest.

{generated}

## Analysis

Notes on the run above go here. The script keeps this section as it is.
"""


def render(
    context: cases.Context,
    started: datetime.datetime,
    arguments: List[str],
    outcomes: Dict[str, tuple],
    elapsed: float,
) -> str:
    lines = [
        f"## Run of {started:%Y-%m-%d %H:%M} UTC",
        "",
        f"Command: `python benchmarks/run_benchmarks.py {' '.join(arguments)}`"
        f" ({elapsed / 60:.1f} minutes). Each tool ran once as a warm-up and then "
        f"{context.runs} times, alternating with the other tools of its case. "
        "Times are whole-process wall time and CPU time (user + system); peak "
        "memory is the maximum resident set size of the process as GNU time "
        "reports it. Every number is the median of the timed runs; "
        "ratios are product ÷ reference, so below 1 is faster or leaner. "
        "MB is 10^6 bytes.",
        "",
        "Machine:",
        "",
        *report.machine_description(context.checkout),
        "",
    ]
    for case in CASES:
        if case.key not in outcomes:
            continue
        size_results = outcomes[case.key]
        profile_text = size_results[-1].extra.get("profile")
        lines += [f"### {case.title}", "", case.description, ""]
        lines += [
            "| Size | Input | Load average (1 min) before and after |",
            "| --- | --- | --- |",
        ]
        for size_result in size_results:
            before, after = size_result.extra.get("load", (float("nan"),) * 2)
            lines.append(
                f"| {size_result.size} | {size_result.input_text}, "
                f"{size_result.input_bytes / 1e6:,.1f} MB | {before:.2f}, {after:.2f} |"
            )
        lines.append("")
        lines += report.case_table(size_results, case.rate_unit)
        lines += ["", "| Target | Measured | Result |", "| --- | --- | --- |"]
        lines += case.assess(size_results)
        lines.append("")
        for size_result in size_results:
            for note in size_result.extra.get("notes", []):
                lines.append(f"- {size_result.size}: {note}")
            if "mismatch" in size_result.extra:
                lines.append(
                    f"- {size_result.size}: **output differs**: {size_result.extra['mismatch']}"
                )
        lines += ["", f"Commands ({size_results[-1].size}):", ""]
        lines += report.command_lines(size_results[-1], context.work)
        if profile_text:
            lines += [
                "",
                f"cProfile of one more product run at {size_results[-1].size} "
                "(main thread only):",
                "",
                *[("    " + line).rstrip() for line in profile_text.splitlines()],
            ]
        lines.append("")
    if "end-to-end" in outcomes:
        lines += end_to_end.render(outcomes["end-to-end"], context)
    return "\n".join(lines)


def parse_arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        default=",".join(SIZES),
        help="comma-separated input sizes to run (default: small,medium,large)",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=5,
        help="timed runs per tool after one warm-up run (default: 5)",
    )
    parser.add_argument(
        "--cases",
        default=",".join([case.key for case in CASES] + ["end-to-end"]),
        help="comma-separated cases to run (default: all: %(default)s)",
    )
    parser.add_argument(
        "--work",
        type=Path,
        help="folder for generated inputs and outputs, kept after the run "
        "(default: a temporary folder that is removed)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=PAGE,
        help="Markdown page to write (default: docs/benchmarks.md)",
    )
    parser.add_argument(
        "--checkout",
        type=Path,
        default=REPOSITORY,
        help="Media2DICOM checkout whose library is measured, for example one "
        "with a patch applied (default: the checkout this script is in)",
    )
    parser.add_argument(
        "--no-profile",
        action="store_true",
        help="skip the cProfile run of the product at the largest size",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds after which one run of a tool is stopped (default: 600)",
    )
    args = parser.parse_args(argv)

    args.sizes = [size.strip() for size in args.sizes.split(",") if size.strip()]
    unknown = [size for size in args.sizes if size not in SIZES]
    if unknown or not args.sizes:
        parser.error(
            f"invalid --sizes {','.join(args.sizes)}: use some of {', '.join(SIZES)}"
        )

    known = {case.key for case in CASES} | {"end-to-end"}
    args.cases = [key.strip() for key in args.cases.split(",") if key.strip()]
    unknown = [key for key in args.cases if key not in known]
    if unknown:
        parser.error(
            f"unknown case {', '.join(unknown)}: use some of {', '.join(sorted(known))}"
        )

    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_arguments(argv)
    started = datetime.datetime.now(datetime.timezone.utc)
    begin = time.monotonic()
    work = args.work or Path(tempfile.mkdtemp(prefix="media2dicom-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    context = cases.Context(
        work=work.resolve(),
        runs=args.runs,
        timeout=args.timeout,
        profile_size=None if args.no_profile else args.sizes[-1],
        checkout=args.checkout.resolve(),
    )
    outcomes = {}
    try:
        for case in CASES:
            if case.key in args.cases:
                outcomes[case.key] = run_case(case, context, args.sizes)
        if "end-to-end" in args.cases:
            outcomes["end-to-end"] = end_to_end.run_case(context)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - begin
    generated = render(context, started, argv, outcomes, elapsed)
    report.replace_generated(args.output, generated, PAGE_TEMPLATE)
    print(f"Wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
