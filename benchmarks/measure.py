"""Whole-process measurement of wall time, CPU time and peak memory.

Each command runs under GNU time (``/usr/bin/time``, Debian package ``time``),
which reports the CPU time and peak resident set size of the command as the
kernel counts them, interpreter start included. GNU time runs between this
script and the command because a child forked straight from this Python
process would start with this process's resident set as its peak, since Linux
keeps that peak across ``exec``.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

MIB = 1024 * 1024
GNU_TIME = "/usr/bin/time"
# Elapsed seconds, user seconds, system seconds, peak resident set in KiB.
GNU_TIME_FORMAT = "%e %U %S %M"


class CommandFailed(Exception):
    """Raised when a measured command exits non-zero or times out."""


@dataclass
class Measurement:
    """One run of one command."""

    wall_seconds: float
    user_seconds: float
    system_seconds: float
    peak_rss_bytes: int
    stdout: str = ""

    @property
    def cpu_seconds(self) -> float:
        return self.user_seconds + self.system_seconds


@dataclass
class Tool:
    """A command to measure, and what to do around each run.

    ``role`` is ``product``, ``reference`` or ``baseline`` (a lower bound such
    as a plain file copy). ``prepare`` runs before each run and ``verify``
    after it, both outside the timed span. ``verify`` raises
    :class:`CommandFailed` when the run did not produce what it should.
    """

    label: str
    role: str
    command: List[str]
    prepare: Optional[Callable[[], None]] = None
    verify: Optional[Callable[[Measurement], None]] = None
    env: Optional[Dict[str, str]] = None
    cwd: Optional[Path] = None


@dataclass
class ToolResult:
    """All timed runs of one tool on one input, or the reason it failed."""

    tool: Tool
    runs: List[Measurement] = field(default_factory=list)
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.runs)

    def median(self, name: str) -> float:
        return statistics.median(getattr(run, name) for run in self.runs)


def run_measured(
    command: Sequence[str],
    *,
    env: Optional[Dict[str, str]] = None,
    cwd: Optional[Path] = None,
    timeout: float = 600.0,
) -> Measurement:
    """Run ``command`` to completion and measure it as a whole process.

    Raises
    ------
    CommandFailed
        When the command exits non-zero or runs longer than ``timeout``
        seconds; the message contains the end of its error output.
    """
    if not os.access(GNU_TIME, os.X_OK):
        raise CommandFailed(
            f"{GNU_TIME} was not found; install GNU time (Debian package 'time')."
        )
    with tempfile.TemporaryDirectory(prefix="measure-") as folder:
        usage_path = Path(folder) / "usage"
        wrapped = [GNU_TIME, "-f", GNU_TIME_FORMAT, "-o", str(usage_path), *command]
        with (
            open(Path(folder) / "stdout", "w+b") as stdout,
            open(Path(folder) / "stderr", "w+b") as stderr,
        ):
            start = time.perf_counter()
            process = subprocess.Popen(
                wrapped,
                stdout=stdout,
                stderr=stderr,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                # Stop the whole process group: GNU time and the command under it.
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                raise CommandFailed(
                    f"timed out after {timeout:.0f} s: {' '.join(command)}"
                )
            wall = time.perf_counter() - start
            stdout.seek(0)
            stderr.seek(0)
            output = stdout.read().decode(errors="replace")
            errors = stderr.read().decode(errors="replace")
        usage_lines = usage_path.read_text().strip().splitlines()

    if process.returncode != 0:
        error_lines = errors.strip().splitlines() or ["(no error output)"]
        tail = "\n".join(error_lines[-8:])
        raise CommandFailed(
            f"exit status {process.returncode}: {error_lines[-1]}\n"
            f"command: {' '.join(command)}\n{tail}"
        )
    _, user, system, peak_kib = usage_lines[-1].split()
    return Measurement(
        wall_seconds=wall,
        user_seconds=float(user),
        system_seconds=float(system),
        peak_rss_bytes=int(peak_kib) * 1024,
        stdout=output,
    )


def run_once(tool: Tool, timeout: float) -> Measurement:
    """Prepare, run and verify one tool once."""
    if tool.prepare:
        tool.prepare()
    # Write back what earlier runs left in the page cache, so that no run
    # pays for the write-back of another tool's output.
    os.sync()
    measurement = run_measured(
        tool.command, env=tool.env, cwd=tool.cwd, timeout=timeout
    )
    if tool.verify:
        tool.verify(measurement)
    return measurement


def run_alternating(
    tools: Sequence[Tool], runs: int, timeout: float = 600.0, log=print
) -> List[ToolResult]:
    """Run each tool once as a warm-up, then ``runs`` times in turn (A B A B).

    Alternating spreads the noise of a shared machine over all tools instead
    of letting it land on whichever tool ran during a busy minute. A tool that
    fails is dropped from the remaining rounds and keeps its error message.
    """
    results = [ToolResult(tool) for tool in tools]
    for result in results:
        try:
            run_once(result.tool, timeout)
        except CommandFailed as exc:
            result.error = str(exc)
            log(f"    {result.tool.label}: FAILED in warm-up: {exc}")

    for round_number in range(runs):
        for result in results:
            if result.error:
                continue
            try:
                measurement = run_once(result.tool, timeout)
            except CommandFailed as exc:
                result.error = str(exc)
                log(f"    {result.tool.label}: FAILED in run {round_number + 1}: {exc}")
                continue
            result.runs.append(measurement)
            log(
                f"    {result.tool.label}: {measurement.wall_seconds:.3f} s wall, "
                f"{measurement.cpu_seconds:.3f} s CPU, "
                f"{measurement.peak_rss_bytes / MIB:.0f} MiB peak"
            )
    return results
