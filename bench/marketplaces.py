"""Benchmark of DAG parsing and scheduling work with 1, 5 and 20 marketplaces. Prints figures; not a test.

    PYTHONPATH=. .venv/bin/python bench/marketplaces.py [--counts 1,5,20] [--repeat 3]

Each marketplace gets one DAG per flow. Airflow 3's DAG processor parses each DAG file in a
process of its own; here every file is parsed the same way, in a fresh process that has already
imported Airflow (the processor's processes are forked from one that has), and the parse alone is
timed (best of ``--repeat``; the first parse also compiles our modules and writes their bytecode,
which the image ships precompiled). Goal: every file of the folder parsed in <= 1 s in total with 20
marketplaces. The target is the parse's CPU time: on a shared machine the wall time moves with the
load (several-fold on two busy cores), the CPU time hardly. The floor beside each file is the CPU
time of a file with as many DAGs and tasks, each task a bare ``@task`` and nothing of ours
imported: what Airflow itself charges for building them.

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
import json, sys, tempfile, time
from pathlib import Path
import airflow.sdk  # noqa: F401  (imported before the clock starts, as in the DAG processor)
from airflow.dag_processing.dagbag import DagBag
from airflow.serialization.serialized_objects import DagSerialization
from airflow.timetables.base import TimeRestriction


def parse(path, repeat):
    # wall and CPU time of each parse; CPU time barely moves with the machine's load
    walls, cpus, bag = [], [], None
    for _ in range(repeat):
        for name in [m for m in sys.modules if m.startswith(("include.woo_mirakl", "unusual_prefix"))]:
            del sys.modules[name]  # each parse starts cold, as in a fresh processor process
        wall, cpu = time.perf_counter(), time.process_time()
        bag = DagBag(dag_folder=path, safe_mode=False)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return walls, cpus, bag


FLOOR = "\n".join([
    "from datetime import datetime",
    "from airflow.sdk import DAG, task",
    "for name, count in SHAPE:",
    "    with DAG(dag_id=name, schedule=None, start_date=datetime(2026, 1, 1)) as dag:",
    "        for i in range(count):",
    "            task(task_id=f't{i}')(lambda: None)()",
    "    globals()[name] = dag",
])

path, repeat = sys.argv[1], int(sys.argv[2])
walls, cpus, bag = parse(path, repeat)
# the floor: as many DAGs and tasks, each task a bare @task, nothing of ours imported
shape = [(dag_id, len(dag.tasks)) for dag_id, dag in bag.dags.items()]
floor_file = Path(tempfile.mkdtemp()) / "floor_dags.py"
floor_file.write_text(f"SHAPE = {shape!r}\n" + FLOOR + "\n", encoding="utf-8")
_, floor_cpus, _ = parse(str(floor_file), repeat)
started = time.perf_counter()
for dag in bag.dags.values():
    DagSerialization.from_dict(DagSerialization.to_dict(dag))  # written, then read back by the scheduler
    next_run = getattr(dag.timetable, "next_dagrun_info", None)  # manual DAGs have none
    if next_run is not None:
        next_run(last_automated_data_interval=None, restriction=TimeRestriction(earliest=None, latest=None,
                                                                                catchup=False))
schedule = time.perf_counter() - started
print(json.dumps({"parse": min(walls), "cpu": min(cpus), "first": walls[0], "floor_cpu": min(floor_cpus),
                  "tasks": sum(c for _, c in shape), "dags": len(bag.dags), "errors": len(bag.import_errors),
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
        cpu = sum(f["cpu"] for f in files.values())
        floor = sum(f["floor_cpu"] for f in files.values())
        schedule = sum(f["schedule"] for f in files.values())
        dags = sum(f["dags"] for f in files.values())
        errors = sum(f["errors"] for f in files.values())
        print(f"\n== {count} marketplace(s): {dags} DAGs, {sum(f['tasks'] for f in files.values())} tasks, "
              f"{errors} import errors")
        for name, f in files.items():
            figure(f"parse {name} (CPU)", f["cpu"] * 1000, "ms", f["floor_cpu"] * 1000)
        figure("parse, every file (wall)", parse, "s")
        figure("parse, every file (CPU)", cpu, "s", floor)
        figure("first parse of each file (compiling our modules)", sum(f["first"] for f in files.values()), "s")
        figure("scheduling work per loop (serialize + next run, every DAG)", schedule * 1000, "ms")
        figure("  per DAG", schedule / max(1, dags) * 1000, "ms")
        if count == max(counts):
            targets.append(Target(f"parse of every DAG file with {count} marketplaces (CPU)", cpu, "s", 1.0, floor))
    print_targets(targets)


if __name__ == "__main__":
    main()
