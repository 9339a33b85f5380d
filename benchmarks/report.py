"""Markdown tables of benchmark results, and the machine they ran on."""

from __future__ import annotations

import os
import platform
import re
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import List, Optional, Sequence

from measure import ToolResult

REPOSITORY = Path(__file__).resolve().parents[1]

PYTHON_PACKAGES = (
    "pydicom",
    "pynetdicom",
    "numpy",
    "numpy-stl",
    "Pillow",
    "imagecodecs",
    "av",
)


def _first_line(command: Sequence[str]) -> str:
    try:
        completed = subprocess.run(
            list(command), capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"not available ({exc})"
    text = (completed.stdout or completed.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def machine_description(checkout: Path = REPOSITORY) -> List[str]:
    """Return Markdown list lines naming the CPU, memory, OS and tool versions."""
    cpu = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        match = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.M)
        if match:
            cpu = match.group(1).strip()

    memory = "unknown"
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        match = re.search(r"^MemTotal:\s*(\d+) kB", meminfo.read_text(), re.M)
        if match:
            memory = f"{int(match.group(1)) / 1024 / 1024:.1f} GiB"

    lines = [
        f"- CPU: {cpu}, {os.cpu_count()} logical cores; memory {memory}",
        f"- OS: {platform.platform()}",
        f"- Python {platform.python_version()} ({sys.executable})",
    ]
    versions = []
    for package in PYTHON_PACKAGES:
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{package} not installed")
    lines.append("- Python packages: " + ", ".join(versions))

    dcmtk = _first_line(["/usr/bin/storescu", "--version"])
    lines.append(f"- DCMTK: {dcmtk.strip('$ ').replace('dcmtk: ', '')}")
    lines.append(f"- Orthanc: {_first_line(['/usr/sbin/Orthanc', '--version'])}")
    commit = _first_line(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"])
    changed = _changed_library_files(checkout)
    if changed:
        commit += f" with uncommitted changes in {', '.join(changed)}"
    where = "" if checkout == REPOSITORY else f" (checkout {checkout})"
    lines.append(f"- Media2DICOM commit: {commit}{where}")
    return lines


def _changed_library_files(checkout: Path) -> List[str]:
    """Return the library files that differ from the commit, as git lists them."""
    try:
        completed = subprocess.run(
            ["git", "-C", str(checkout), "status", "--porcelain", "Media2DICOMLib"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line[3:] for line in completed.stdout.splitlines() if line.strip()]


def format_bytes(value: float) -> str:
    """Format a byte count in MB (10^6 bytes), the unit the targets use."""
    return f"{value / 1e6:,.0f} MB"


def format_ratio(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.2f}"


def ratio(
    result: ToolResult, other: Optional[ToolResult], name: str
) -> Optional[float]:
    if other is None or not result.ok or not other.ok:
        return None
    denominator = other.median(name)
    return result.median(name) / denominator if denominator else None


def tool_rows(
    size_result, rate_unit: str, reference: Optional[ToolResult]
) -> List[str]:
    """Return one table row per tool of one input size."""
    rows = []
    for result in size_result.results:
        label = result.tool.label
        if not result.ok:
            reason = (result.error or "no runs").splitlines()[0]
            rows.append(
                f"| {size_result.size} | {label} | failed: {reason} | | | | | |"
            )
            continue
        wall = result.median("wall_seconds")
        cpu = result.median("cpu_seconds")
        peak = result.median("peak_rss_bytes")
        rate = size_result.inner_rates.get(label)
        if rate is None and wall:
            rate = size_result.work_amount / wall
        wall_ratio = (
            ratio(result, reference, "wall_seconds")
            if result is not reference
            else None
        )
        peak_ratio = (
            ratio(result, reference, "peak_rss_bytes")
            if result is not reference
            else None
        )
        rows.append(
            f"| {size_result.size} | {label} | {wall:.3f} | {cpu:.3f} | "
            f"{format_bytes(peak)} | {rate:,.1f} {rate_unit} | "
            f"{format_ratio(wall_ratio)} | {format_ratio(peak_ratio)} |"
        )
    return rows


TABLE_HEADER = [
    "| Size | Tool | Wall s (median) | CPU s (median) | Peak RSS (median) | Rate | Wall ÷ reference | Peak ÷ reference |",
    "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
]


def case_table(
    size_results, rate_unit: str, reference_label: Optional[str] = None
) -> List[str]:
    """Return the Markdown table of one case over all sizes."""
    lines = list(TABLE_HEADER)
    for size_result in size_results:
        references = size_result.by_role("reference")
        reference = references[0] if references else None
        if reference_label:
            reference = next(
                (r for r in size_result.results if r.tool.label == reference_label),
                reference,
            )
        lines.extend(tool_rows(size_result, rate_unit, reference))
    return lines


def display_command(command: Sequence[str], work: Path) -> str:
    """Return a command as a shell line with machine-specific paths shortened.

    The scratch folder becomes $WORK, the interpreter ``python`` and paths in
    this checkout become relative to it (the shared test data folder is
    ``../shared/data`` from there).
    """
    line = shlex.join(command).replace(str(work), "$WORK")
    line = line.replace(sys.executable, "python")
    line = line.replace(str(REPOSITORY) + "/", "")
    return line.replace(str(REPOSITORY.parent) + "/", "../")


def command_lines(size_result, work: Path) -> List[str]:
    """Return the exact commands of one input size as indented shell lines."""
    return [f"    {display_command(r.tool.command, work)}" for r in size_result.results]


def replace_generated(page: Path, generated: str, template: str) -> None:
    """Write ``generated`` between the page's markers, keeping text outside them.

    A page without the markers is written from ``template``, which contains
    the string ``{generated}`` where the results go.
    """
    begin = "<!-- BEGIN GENERATED: run_benchmarks.py rewrites this part -->"
    end = "<!-- END GENERATED -->"
    block = f"{begin}\n{generated.rstrip()}\n{end}"
    if page.exists():
        text = page.read_text()
        if begin in text and end in text:
            head = text.split(begin, 1)[0]
            tail = text.split(end, 1)[1]
            page.write_text(head + block + tail)
            return
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(template.replace("{generated}", block))
