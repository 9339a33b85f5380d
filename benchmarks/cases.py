"""The benchmark cases: inputs, the product's command and the reference tools.

Each case function takes the run context and a size name and returns a
:class:`SizeResult` with every tool measured on the same generated input.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import inputs
from measure import CommandFailed, Measurement, Tool, ToolResult, run_alternating

REPOSITORY = inputs.REPOSITORY
BENCHMARKS = Path(__file__).resolve().parent
DCMTK_STL2DCM = inputs.DCMTK_STL2DCM
DCMTK_STORESCU = "/usr/bin/storescu"
STORE_AET = "STORESCP"

sys.path.insert(0, str(REPOSITORY / "Testing" / "Python"))
import peers  # noqa: E402

# Input sizes per case. The large sizes are the ones the targets are set for.
ENCAPSULATE_MB = {"small": 10, "medium": 50, "large": 200}
ASCII_MB = {"small": 10, "medium": 40, "large": 130}
STORE_LARGE_MB = {"small": 10, "medium": 50, "large": 200}
STORE_SMALL_COUNT = {"small": 50, "medium": 200, "large": 500}
SMALL_OBJECT_TRIANGLES = 1000
CINE_FRAMES = {"small": 30, "medium": 100, "large": 300}
CINE_ROWS, CINE_COLUMNS = 1080, 1920


@dataclass
class Context:
    """Settings shared by all cases in one benchmark run."""

    work: Path
    runs: int
    timeout: float
    log: Callable[[str], None] = print
    python: str = sys.executable
    # Size at which the product runs once more under cProfile, or None.
    profile_size: Optional[str] = None
    # Media2DICOM checkout whose library is measured.
    checkout: Path = REPOSITORY

    def product_env(self) -> Dict[str, str]:
        """Return the environment for product runs: this checkout, scratch settings."""
        env = dict(os.environ)
        path = env.get("PYTHONPATH")
        env["PYTHONPATH"] = str(self.checkout) + (os.pathsep + path if path else "")
        # Keep the settings file and the outbox out of the user's own folders.
        env["MEDIA2DICOM_SETTINGS"] = str(self.work / "settings" / "settings.json")
        env["XDG_CONFIG_HOME"] = str(self.work / "settings")
        env["XDG_DATA_HOME"] = str(self.work / "data-home")
        return env

    def product_cli(self, *arguments: str) -> List[str]:
        """Return the command line of ``media2dicom``; run it with cwd=checkout.

        ``python -m`` puts the working folder first on sys.path, ahead of
        PYTHONPATH, so the working folder decides which library is imported.
        """
        return [self.python, "-m", "Media2DICOMLib.cli", *arguments]


@dataclass
class SizeResult:
    """All tools measured on one input of one case."""

    size: str
    input_text: str
    input_bytes: int
    results: List[ToolResult]
    work_amount: float = 0.0
    work_unit: str = "MB"
    # Rate per tool label from the tool's own timing of its main loop, for
    # cases whose whole-process time includes set-up both tools share.
    inner_rates: Dict[str, float] = field(default_factory=dict)
    extra: Dict[str, object] = field(default_factory=dict)

    def by_role(self, role: str) -> List[ToolResult]:
        return [result for result in self.results if result.tool.role == role]


def _expect_file(path: Path, min_bytes: int) -> Callable[[Measurement], None]:
    def verify(_measurement: Measurement) -> None:
        if not path.is_file():
            raise CommandFailed(f"expected output {path} was not written")
        if path.stat().st_size < min_bytes:
            raise CommandFailed(
                f"output {path} has {path.stat().st_size} bytes, expected at "
                f"least {min_bytes}"
            )

    return verify


def _expect_files(folder: Path, count: int, min_bytes: int = 0):
    def verify(_measurement: Measurement) -> None:
        files = [p for p in folder.rglob("*") if p.is_file()]
        if len(files) != count:
            raise CommandFailed(f"{folder} has {len(files)} files, expected {count}")
        smallest = min((p.stat().st_size for p in files), default=0)
        if smallest < min_bytes:
            raise CommandFailed(
                f"a file in {folder} has {smallest} bytes, expected at least "
                f"{min_bytes}"
            )

    return verify


def _clear(*paths: Path) -> Callable[[], None]:
    def prepare() -> None:
        for path in paths:
            inputs.remove(path)

    return prepare


def _clear_contents(folder: Path) -> Callable[[], None]:
    def prepare() -> None:
        for path in folder.iterdir():
            inputs.remove(path)

    return prepare


PROFILE_LINES = 14


def profile_product(
    context: Context, size: str, results: List[ToolResult]
) -> Optional[str]:
    """Run the product once more under cProfile; return its top functions by own time.

    Returns None unless ``size`` is the context's profile size and the product
    is a Python command that succeeded. cProfile records only the main thread.
    """
    product = next((r for r in results if r.tool.role == "product"), None)
    if size != context.profile_size or product is None or not product.ok:
        return None
    command = product.tool.command
    if command[0] != context.python:
        return None
    context.log(f"    profiling {product.tool.label}")
    stats_path = context.work / "profile.pstats"
    if product.tool.prepare:
        product.tool.prepare()
    try:
        subprocess.run(
            [context.python, "-m", "cProfile", "-o", str(stats_path), *command[1:]],
            env=product.tool.env,
            cwd=product.tool.cwd,
            check=True,
            capture_output=True,
            timeout=context.timeout,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        return f"profiling failed: {exc}"
    return _format_profile(stats_path)


def _format_profile(stats_path: Path) -> str:
    """Return the top functions by own time, then this project's by cumulative time."""
    stream = io.StringIO()
    stats = pstats.Stats(str(stats_path), stream=stream)
    stats.sort_stats("tottime").print_stats(PROFILE_LINES)
    own = _function_table(stream.getvalue())
    stream.seek(0)
    stream.truncate()
    stats.sort_stats("cumulative").print_stats("Media2DICOMLib", PROFILE_LINES)
    project = _function_table(stream.getvalue())
    text = (
        f"Top {PROFILE_LINES} functions by own time (tottime):\n\n{own}\n\n"
        f"Top {PROFILE_LINES} Media2DICOMLib functions by cumulative time:\n\n{project}"
    )
    return text.replace(str(REPOSITORY) + os.sep, "").replace(
        str(Path(sys.prefix)), "$PYTHON"
    )


def _function_table(text: str) -> str:
    # Keep the function table, not pstats' preamble.
    start = text.find("   ncalls")
    return text[start:].rstrip() if start >= 0 else text.rstrip()


def _cached(path: Path, make: Callable[[Path], object]) -> Path:
    """Generate ``path`` once per work folder, so reruns reuse the input."""
    if not path.exists():
        partial = path.with_name(path.name + ".part")
        inputs.remove(partial)
        make(partial)
        partial.rename(path)
    return path


# Case 1 -----------------------------------------------------------------


def encapsulate_stl(context: Context, size: str) -> SizeResult:
    """Encapsulate a binary STL into the source study: product, stl2dcm, cp."""
    megabytes = ENCAPSULATE_MB[size]
    triangles = inputs.binary_stl_triangle_count(megabytes * 1000 * 1000)
    stl_path = _cached(
        context.work / f"binary_{megabytes}MB.stl",
        lambda path: inputs.write_binary_stl(path, triangles),
    )
    stl_bytes = stl_path.stat().st_size
    source_files = inputs.source_series_files()
    out = context.work / "case1"
    out.mkdir(exist_ok=True)
    product_folder = out / "product"
    reference_file = out / "stl2dcm.dcm"
    copy_file = out / "copy.stl"

    # Product: the source is the whole series, as the command is used.
    source_arguments = []
    for path in source_files:
        source_arguments += ["-s", str(path)]
    product = Tool(
        "media2dicom encapsulate",
        "product",
        context.product_cli(
            "encapsulate", *source_arguments, "-o", str(product_folder), str(stl_path)
        ),
        prepare=_clear(product_folder),
        verify=_expect_files(product_folder, 1, stl_bytes),
        env=context.product_env(),
        cwd=context.checkout,
    )
    reference = Tool(
        "DCMTK stl2dcm",
        "reference",
        [
            DCMTK_STL2DCM,
            "-q",
            "+st",
            str(source_files[0]),
            "-an",
            "+mu",
            "UCUM",
            "mm",
            "mm",
            str(stl_path),
            str(reference_file),
        ],
        prepare=_clear(reference_file),
        verify=_expect_file(reference_file, stl_bytes),
    )
    baseline = Tool(
        "cp (file copy)",
        "baseline",
        ["cp", str(stl_path), str(copy_file)],
        prepare=_clear(copy_file),
        verify=_expect_file(copy_file, stl_bytes),
    )
    results = run_alternating(
        [product, reference, baseline], context.runs, context.timeout, context.log
    )
    return SizeResult(
        size,
        f"binary STL, {triangles:,} triangles",
        stl_bytes,
        results,
        work_amount=stl_bytes / 1e6,
        extra={"profile": profile_product(context, size, results)},
    )


# Case 2 -----------------------------------------------------------------


def ascii_to_binary(context: Context, size: str) -> SizeResult:
    """Convert ASCII STL to binary: product reader against numpy-stl's reader."""
    megabytes = ASCII_MB[size]
    counts = {}

    def make(path: Path) -> None:
        counts["triangles"] = inputs.write_ascii_stl(path, megabytes * 1000 * 1000)

    ascii_path = _cached(context.work / f"ascii_{megabytes}MB.stl", make)
    ascii_bytes = ascii_path.stat().st_size
    out = context.work / "case2"
    out.mkdir(exist_ok=True)
    script = str(BENCHMARKS / "ascii_to_binary.py")
    tools = []
    for converter, role in (("media2dicom", "product"), ("numpy-stl", "reference")):
        target = out / f"{converter}.stl"
        tools.append(
            Tool(
                f"{converter} ASCII reader",
                role,
                [context.python, script, converter, str(ascii_path), str(target)],
                prepare=_clear(target),
                verify=_expect_file(target, 84 + 50),
                env=context.product_env(),
                cwd=context.checkout,
            )
        )
    results = run_alternating(tools, context.runs, context.timeout, context.log)
    triangles = _binary_triangle_count(out / "numpy-stl.stl")
    product_output = out / "media2dicom.stl"
    product_triangles = _binary_triangle_count(product_output)
    extra = {"profile": profile_product(context, size, results)}
    if product_output.is_file():
        extra["output_bytes"] = product_output.stat().st_size
    if (
        triangles is not None
        and product_triangles is not None
        and triangles != product_triangles
    ):
        extra["mismatch"] = (
            f"media2dicom wrote {product_triangles:,} triangles, numpy-stl "
            f"{triangles:,}"
        )
    return SizeResult(
        size,
        f"ASCII STL, {triangles or 0:,} triangles",
        ascii_bytes,
        results,
        work_amount=ascii_bytes / 1e6,
        extra=extra,
    )


def _binary_triangle_count(path: Path) -> Optional[int]:
    if not path.is_file():
        return None
    with open(path, "rb") as handle:
        handle.seek(80)
        return int.from_bytes(handle.read(4), "little")


# Case 3 -----------------------------------------------------------------

STORESCU_CONFIG = """\
[[TransferSyntaxes]]
[ExplicitLittle]
TransferSyntax1 = LittleEndianExplicit
[[PresentationContexts]]
[Models]
PresentationContext1 = 1.2.840.10008.5.1.4.1.1.104.3\\ExplicitLittle
[[Profiles]]
[EncapsulatedSTL]
PresentationContexts = Models
"""


def storescu_config(work: Path) -> Path:
    """Write a storescu profile that proposes Encapsulated STL Storage.

    DCMTK 3.6.7 storescu does not propose this SOP class by itself, but it
    sends any SOP class that a configuration file profile lists.
    """
    path = work / "storescu-encapsulated-stl.cfg"
    path.write_text(STORESCU_CONFIG)
    return path


@contextlib.contextmanager
def without_nagle():
    """Start DCMTK and Orthanc peers with Nagle's algorithm disabled.

    DCMTK 3.6.2 and later leave Nagle's algorithm on unless the environment
    variable TCP_NODELAY is 1. With it on, each C-STORE waits for a delayed
    ACK (about 45 ms per object measured here on loopback), which would hide
    the speed of every client. The peers inherit this environment.
    """
    previous = os.environ.get("TCP_NODELAY")
    os.environ["TCP_NODELAY"] = "1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TCP_NODELAY"]
        else:
            os.environ["TCP_NODELAY"] = previous


def start_storescp(context: Context):
    """Start DCMTK storescp on loopback with Nagle's algorithm disabled."""
    with without_nagle():
        return peers.start_storescp(context.work / "received", aet=STORE_AET)


def storescu_command(config: Path, aet: str, port: int, files: List[str]) -> List[str]:
    """Return a DCMTK storescu command that proposes Encapsulated STL Storage."""
    if len(files) == 1 and Path(files[0]).is_dir():
        files = ["+sd", files[0]]
    return [
        DCMTK_STORESCU,
        "-xf",
        str(config),
        "EncapsulatedSTL",
        "-aec",
        aet,
        "127.0.0.1",
        str(port),
        *files,
    ]


def _store_tools(
    context: Context, scp, files_argument: List[str], count: int, min_bytes: int
) -> List[Tool]:
    config = storescu_config(context.work)
    received = Path(scp.folder)
    product = Tool(
        "media2dicom send",
        "product",
        context.product_cli(
            "send",
            "--host",
            "127.0.0.1",
            "--port",
            str(scp.port),
            "--called-aet",
            STORE_AET,
            *files_argument,
        ),
        prepare=_clear_contents(received),
        verify=_expect_files(received, count, min_bytes),
        env=context.product_env(),
        cwd=context.checkout,
    )
    storescu = storescu_command(config, STORE_AET, scp.port, files_argument)
    reference = Tool(
        "DCMTK storescu, TCP_NODELAY=1",
        "reference",
        ["env", "TCP_NODELAY=1", *storescu],
        prepare=_clear_contents(received),
        verify=_expect_files(received, count, min_bytes),
    )
    as_shipped = Tool(
        "DCMTK storescu, defaults",
        "reference",
        storescu,
        prepare=_clear_contents(received),
        verify=_expect_files(received, count, min_bytes),
        env={key: value for key, value in os.environ.items() if key != "TCP_NODELAY"},
    )
    return [product, reference, as_shipped]


def _measure_sends(
    context: Context, size: str, files: List[str], count: int, min_bytes: int
):
    """Run the senders against one storescp; return their results and a profile."""
    scp = start_storescp(context)
    try:
        tools = _store_tools(context, scp, files, count, min_bytes)
        results = run_alternating(tools, context.runs, context.timeout, context.log)
        profile = profile_product(context, size, results)
    finally:
        scp.stop()
    return results, profile


def _encapsulated_object(context: Context, name: str, triangles: int) -> Path:
    """Return an Encapsulated STL object of random triangles, written by stl2dcm."""
    source = inputs.source_series_files()[0]
    stl_path = _cached(
        context.work / f"{name}.stl",
        lambda path: inputs.write_binary_stl(path, triangles),
    )
    return _cached(
        context.work / f"{name}.dcm",
        lambda path: inputs.write_encapsulated_stl_reference(stl_path, source, path),
    )


def store_large(context: Context, size: str) -> SizeResult:
    """Send one large Encapsulated STL object to DCMTK storescp."""
    megabytes = STORE_LARGE_MB[size]
    triangles = inputs.binary_stl_triangle_count(megabytes * 1000 * 1000)
    dicom_path = _encapsulated_object(context, f"binary_{megabytes}MB", triangles)
    object_bytes = dicom_path.stat().st_size
    results, profile = _measure_sends(context, size, [str(dicom_path)], 1, object_bytes)
    return SizeResult(
        size,
        f"1 Encapsulated STL object, {triangles:,} triangles",
        object_bytes,
        results,
        work_amount=object_bytes / 1e6,
        extra={"profile": profile},
    )


def store_many(context: Context, size: str) -> SizeResult:
    """Send many small Encapsulated STL objects in one association."""
    count = STORE_SMALL_COUNT[size]
    template = _encapsulated_object(context, "small_object", SMALL_OBJECT_TRIANGLES)
    folder = context.work / f"objects_{count}"
    if not folder.is_dir():
        inputs.write_copies_with_new_uids(template, folder, count)
    total = sum(path.stat().st_size for path in folder.iterdir())
    results, profile = _measure_sends(context, size, [str(folder)], count, 1)
    return SizeResult(
        size,
        f"{count} Encapsulated STL objects of {template.stat().st_size // 1000} kB",
        total,
        results,
        work_amount=count,
        work_unit="objects",
        extra={"profile": profile},
    )


# Case 4 -----------------------------------------------------------------


def cine_jpeg(context: Context, size: str) -> SizeResult:
    """Encode RGB cine frames to JPEG Baseline: product against a Pillow loop."""
    count = CINE_FRAMES[size]
    out = context.work / "case4"
    out.mkdir(exist_ok=True)
    script = str(BENCHMARKS / "cine_jpeg.py")
    rates: Dict[str, List[float]] = {}
    cores: Dict[str, List[float]] = {}
    tools = []
    for encoder, label, role in (
        ("media2dicom", "media2dicom Secondary Capture", "product"),
        ("pillow", "Pillow loop, one thread", "reference"),
    ):
        target = out / f"{encoder}.out"

        def verify(measurement: Measurement, label=label, target=target) -> None:
            if not target.is_file() or target.stat().st_size < count * 1000:
                raise CommandFailed(
                    f"{target} is missing or too small for {count} frames"
                )
            timing = json.loads(measurement.stdout.strip().splitlines()[-1])
            rates.setdefault(label, []).append(timing["frames"] / timing["seconds"])
            cores.setdefault(label, []).append(
                timing["cpu_seconds"] / timing["seconds"]
            )

        tools.append(
            Tool(
                label,
                role,
                [context.python, script, encoder, str(count), str(target)],
                prepare=_clear(target),
                verify=verify,
                env=context.product_env(),
                cwd=context.checkout,
            )
        )
    results = run_alternating(tools, context.runs, context.timeout, context.log)
    # The first rate of each tool is its warm-up run.
    inner_rates = {
        label: statistics.median(values[1:])
        for label, values in rates.items()
        if len(values) > 1
    }
    inner_cores = {
        label: statistics.median(values[1:])
        for label, values in cores.items()
        if len(values) > 1
    }
    return SizeResult(
        size,
        f"{count} frames of {CINE_COLUMNS}×{CINE_ROWS} RGB",
        count * CINE_ROWS * CINE_COLUMNS * 3,
        results,
        work_amount=count,
        work_unit="frames",
        inner_rates=inner_rates,
        extra={
            "profile": profile_product(context, size, results),
            "cores": inner_cores,
        },
    )
