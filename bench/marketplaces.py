"""Benchmark of DAG parsing and scheduling work with 1, 5 and 20 marketplaces. Prints figures; not a test.

    PYTHONPATH=. .venv/bin/python bench/marketplaces.py [--counts 1,5,20] [--repeat 3]

Each marketplace gets one DAG per flow. Airflow 3's DAG processor parses each DAG file in a
process of its own; here every file is parsed the same way, in a fresh process that has already
imported Airflow (the processor's processes are forked from one that has), and the parse alone is
timed (best of ``--repeat``; the first parse also compiles our modules and writes their bytecode,
which the image ships precompiled). Goal: every file of the folder parsed in <= 1 s in total with 20
marketplaces.

Scheduling: what the scheduler does per DAG on each loop that depends on the DAG itself — its
serialized form (what the scheduler reads back from the database) and the timetable's next run —
is timed for every DAG. It is a proxy for the scheduler loop's responsiveness, not a scheduler
run: the loop's database work grows with DAG runs, not with how DAGs are written.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Target, figure, header, print_targets  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DAGS = ROOT / "dags"

CHILD = r"""
import json, sys, time
from pathlib import Path
import airflow.sdk  # noqa: F401  (imported before the clock starts, as in the DAG processor)
from airflow.dag_processing.dagbag import DagBag
from airflow.serialization.serialized_objects import DagSerialization
from airflow.timetables.base import TimeRestriction

path, repeat = sys.argv[1], int(sys.argv[2])
times, bag = [], None
for _ in range(repeat):
    for name in [m for m in sys.modules if m.startswith(("include.woo_mirakl", "unusual_prefix"))]:
        del sys.modules[name]  # each parse starts cold, as in a fresh processor process
    started = time.perf_counter()
    bag = DagBag(dag_folder=path, safe_mode=False)
    times.append(time.perf_counter() - started)
best = min(times)
started = time.perf_counter()
for dag in bag.dags.values():
    DagSerialization.from_dict(DagSerialization.to_dict(dag))  # written, then read back by the scheduler
    next_run = getattr(dag.timetable, "next_dagrun_info", None)  # manual DAGs have none
    if next_run is not None:
        next_run(last_automated_data_interval=None, restriction=TimeRestriction(earliest=None, latest=None,
                                                                                catchup=False))
schedule = time.perf_counter() - started
print(json.dumps({"parse": best, "first": times[0], "dags": len(bag.dags), "errors": len(bag.import_errors),
                  "schedule": schedule}))
"""


def marketplaces_file(count: int, directory: Path) -> Path:
    path = directory / f"marketplaces-{count}.yaml"
    entries = [{"name": f"mp{i:02d}", "mirakl_conn_id": f"mirakl_mp{i:02d}",
                "woocommerce_conn_id": "woocommerce_default"} for i in range(count)]
    path.write_text(json.dumps({"marketplaces": entries}), encoding="utf-8")  # JSON is YAML
    return path


def measure(count: int, repeat: int, workdir: Path) -> dict:
    env = {**os.environ, "WOO_MIRAKL_MARKETPLACES": str(marketplaces_file(count, workdir)),
           "AIRFLOW_HOME": str(workdir / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS), "AIRFLOW__LOGGING__LOGGING_LEVEL": "ERROR",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
           # our modules' bytecode is cached, as in the image (its Dockerfile compiles include/): without
           # it each parse compiles every module it imports; kept out of the tree
           "PYTHONPYCACHEPREFIX": str(workdir / "pycache")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    files = {}
    for path in sorted(DAGS.glob("*.py")):
        out = subprocess.run([sys.executable, "-c", CHILD, str(path), str(repeat)], capture_output=True, text=True,
                             env=env)
        if out.returncode:
            raise RuntimeError(f"parsing {path.name} failed:\n{out.stderr[-3000:]}")
        files[path.name] = json.loads(out.stdout.strip().splitlines()[-1])
    return files


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1,5,20")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.counts.split(",")]
    header(f"DAG parsing and scheduling bench: {', '.join(map(str, counts))} marketplaces, "
           f"{len(list(DAGS.glob('*.py')))} DAG files")
    workdir = Path(tempfile.mkdtemp(prefix="bench-marketplaces-"))
    targets = []
    for count in counts:
        files = measure(count, args.repeat, workdir)
        parse = sum(f["parse"] for f in files.values())
        schedule = sum(f["schedule"] for f in files.values())
        dags = sum(f["dags"] for f in files.values())
        errors = sum(f["errors"] for f in files.values())
        print(f"\n== {count} marketplace(s): {dags} DAGs, {errors} import errors")
        for name, f in files.items():
            figure(f"parse {name}", f["parse"] * 1000, "ms")
        figure("parse, every file", parse, "s")
        figure("first parse of each file (compiling our modules)", sum(f["first"] for f in files.values()), "s")
        figure("scheduling work per loop (serialize + next run, every DAG)", schedule * 1000, "ms")
        figure("  per DAG", schedule / max(1, dags) * 1000, "ms")
        if count == max(counts):
            targets.append(Target(f"parse of every DAG file with {count} marketplaces", parse, "s", 1.0))
    print_targets(targets)


if __name__ == "__main__":
    main()
