"""End to end on the real data: source CT and three models to objects in Orthanc.

Run as a script, this is the product side of the case: it reads the source
series, encapsulates the models and sends them to Orthanc, and prints one JSON
line with the seconds of each phase. Imported, it provides the case for
``run_benchmarks.py``, which also runs DCMTK stl2dcm and storescu on the same
models for comparison and checks that Orthanc stored every object.

Usage: ``python benchmarks/end_to_end.py run SPAWN_TIME PORT AET OUTPUT SOURCE... -- STL...``
"""

from __future__ import annotations

import json
import shlex
import statistics
import sys
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
MODEL_NAMES = ("liver", "spine", "heart")
ORTHANC_AET = "ORTHANC"


def main(argv) -> int:
    # The first phase is interpreter start up to here, from the parent's clock.
    spawned = float(argv[0])
    phases = {"start (interpreter, before imports)": time.time() - spawned}
    port, aet, output = int(argv[1]), argv[2], Path(argv[3])
    separator = argv.index("--")
    sources = [Path(path) for path in argv[4:separator]]
    models = [Path(path) for path in argv[separator + 1 :]]

    mark = time.perf_counter()
    # PYTHONPATH, when set, chooses the checkout to measure; else this one.
    sys.path.append(str(REPOSITORY))
    from Media2DICOMLib.encapsulated_stl import encapsulate_models
    from Media2DICOMLib.network import send_files
    from Media2DICOMLib.settings import Server
    from Media2DICOMLib.source_study import read_source_series

    phases["import"] = time.perf_counter() - mark

    mark = time.perf_counter()
    source = read_source_series(sources)
    phases["read source series"] = time.perf_counter() - mark

    mark = time.perf_counter()
    paths = encapsulate_models(source, models, output)
    phases["encapsulate"] = time.perf_counter() - mark

    mark = time.perf_counter()
    server = Server(name="benchmark", host="127.0.0.1", port=port, called_aet=aet)
    results = send_files(server, paths)
    phases["send (C-STORE)"] = time.perf_counter() - mark

    failed = [result.message for result in results if not result.stored]
    if failed:
        print("\n".join(failed), file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "phases": phases,
                "sop_instance_uids": [r.sop_instance_uid for r in results],
            }
        )
    )
    return 0


# The case, used by run_benchmarks.py --------------------------------------


def run_case(context):
    """Measure the product and the DCMTK tools storing the real models in Orthanc."""
    import cases
    import inputs
    from measure import CommandFailed, Tool, run_alternating

    data = inputs.SHARED_DATA
    models = [data / "models" / f"{name}.stl" for name in MODEL_NAMES]
    sources = sorted((data / "ct-3slice").glob("*.dcm"))
    if not sources or not all(path.is_file() for path in models):
        context.log(f"== End to end: skipped, the real data is not at {data}")
        return {"skipped": f"the real data was not found at {data}"}
    if not cases.peers.orthanc_available():
        return {"skipped": "Orthanc is not installed (Debian package orthanc)"}

    context.log("== End to end: real CT and three models into Orthanc")
    work = context.work / "end-to-end"
    work.mkdir(exist_ok=True)
    with cases.without_nagle():
        orthanc = cases.peers.start_orthanc(work / "orthanc", aet=ORTHANC_AET)
    phase_runs = []
    try:
        product_output = work / "product"

        def product_prepare():
            inputs.remove(product_output)
            product.command[3] = repr(time.time())

        def product_verify(measurement):
            result = json.loads(measurement.stdout.strip().splitlines()[-1])
            for uid in result["sop_instance_uids"]:
                if not orthanc.find_instances(uid):
                    raise CommandFailed(f"Orthanc did not store {uid}")
            phase_runs.append(result["phases"])

        product = Tool(
            "media2dicom (library calls)",
            "product",
            [
                context.python,
                str(Path(__file__).resolve()),
                "run",
                "0",
                str(orthanc.dicom_port),
                ORTHANC_AET,
                str(product_output),
                *map(str, sources),
                "--",
                *map(str, models),
            ],
            prepare=product_prepare,
            verify=product_verify,
            env=context.product_env(),
            cwd=context.checkout,
        )
        reference = _dcmtk_tool(context, work, sources[0], models, orthanc)
        results = run_alternating(
            [product, reference], context.runs, context.timeout, context.log
        )
    finally:
        orthanc.stop()
    # The warm-up run's phases are not part of the medians.
    phase_runs = phase_runs[1:]
    return {
        "results": results,
        "phases": phase_runs,
        "models": models,
        "sources": sources,
    }


def _dcmtk_tool(context, work, source, models, orthanc):
    """Return stl2dcm for each model, then one storescu for all, as one shell command."""
    import cases
    import inputs
    from measure import Tool

    out = work / "dcmtk"
    steps = [f"mkdir -p {shlex.quote(str(out))}"]
    for model in models:
        target = out / f"{model.stem}.dcm"
        steps.append(
            shlex.join(
                [
                    cases.DCMTK_STL2DCM,
                    "-q",
                    "+st",
                    str(source),
                    "-an",
                    "+mu",
                    "UCUM",
                    "mm",
                    "mm",
                    str(model),
                    str(target),
                ]
            )
        )
    config = cases.storescu_config(context.work)
    targets = [str(out / f"{model.stem}.dcm") for model in models]
    storescu = cases.storescu_command(config, ORTHANC_AET, orthanc.dicom_port, targets)
    steps.append(shlex.join(["env", "TCP_NODELAY=1", *storescu]))
    return Tool(
        "DCMTK stl2dcm ×3 + storescu",
        "reference",
        ["bash", "-c", " && ".join(steps)],
        prepare=lambda: inputs.remove(out),
    )


def render(outcome, context) -> list:
    """Return the Markdown lines of the end-to-end case."""
    import report

    lines = ["### 5. End to end: real CT and three models into Orthanc", ""]
    if "skipped" in outcome:
        return lines + [f"Skipped: {outcome['skipped']}.", ""]
    results = outcome["results"]
    models = outcome["models"]
    total = sum(path.stat().st_size for path in models)
    lines += [
        "The real 3-slice CT series and the liver, spine and heart models "
        f"({total / 1e6:.1f} MB of binary STL) go into a fresh Orthanc 1.10 on "
        "loopback. The product reads the source series, writes three Encapsulated "
        "STL objects in one new series and sends them in one association. Each "
        "run is checked by looking up every stored SOP Instance UID through "
        "Orthanc's REST API. For comparison, DCMTK stl2dcm encapsulates each "
        "model (`+st`) and one storescu sends the three files.",
        "",
        *report.TABLE_HEADER,
    ]

    class _Size:
        size = "3 models"
        inner_rates = {}
        work_amount = total / 1e6

    _Size.results = results
    reference = next((r for r in results if r.tool.role == "reference"), None)
    lines += report.tool_rows(_Size, "MB/s", reference)
    phases = outcome["phases"]
    if phases:
        lines += [
            "",
            "Time split of the product (median seconds of the timed runs):",
            "",
        ]
        lines += ["| Phase | Seconds |", "| --- | ---: |"]
        accounted = 0.0
        for name in phases[0]:
            value = statistics.median(run[name] for run in phases)
            accounted += value
            lines.append(f"| {name} | {value:.3f} |")
        product = next((r for r in results if r.tool.role == "product"), None)
        if product is not None and product.ok:
            wall = product.median("wall_seconds")
            rest = wall - accounted
            lines.append(
                f"| rest (interpreter exit, not timed in-process) | {rest:.3f} |"
            )
            lines.append(f"| whole process (median wall) | {wall:.3f} |")
    lines += ["", "Commands:", ""]
    for result in results:
        command = list(result.tool.command)
        if result.tool.role == "product":
            command[3] = "SPAWN_TIME"
        lines.append("    " + report.display_command(command, context.work))
    lines.append("")
    return lines


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "run":
        sys.exit(main(sys.argv[2:]))
    print(__doc__, file=sys.stderr)
    sys.exit(2)
