"""Instructions per entry of the floor and of the service's burst run, counted by callgrind.

Wall-clock throughput on a shared 2-core machine moves by 10-15% between runs, more than most
single changes are worth. callgrind counts the instructions the benchmark's Python process
executes: the same count for the same code and input, whatever else the machine does. Only that
process is counted (not redis-server, which runs beside it) and waiting costs nothing, so this
complements `service_bench.py`, it does not replace it: a change that removes a round trip shows
up there, not here.

    uv run python benches/service_instructions.py [--entries 15000]

Each side runs in its own process under `valgrind --tool=callgrind --instr-atstart=no`, which
switches counting on (`callgrind_control -i on`) only around the measured loop: the same
`floor_pass` and burst run as `service_bench.py`, over the same kind of input, except that the
service writes its checkpoint (timed) once per stream, at the end: the per-entry work, with the
checkpoint cost of a long run amortised away. About a minute per side, as valgrind runs Python
some 30 times slower.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benches"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from tests.support.redis_servers import RedisServer  # noqa: E402

import service_bench as bench  # noqa: E402

SIDES = ("floor", "service")
# Checkpoints are timed: under valgrind, some 30 times slower, a run would write 30 times as many
# per entry as it does at full speed. With this interval it writes one per stream, at the end.
ONE_HOUR_MS = 3_600_000


def count_side(side: str, inputs_file: Path, workdir: Path) -> int:
    """Instructions of one side's measured loop, from valgrind's summary line."""
    out_file = workdir / f"callgrind.{side}.out"
    command = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out_file}",
        sys.executable,
        __file__,
        "--side",
        side,
        "--inputs",
        str(inputs_file),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    found = re.search(r"Collected : ([\d,]+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"{side} run failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return int(found.group(1).replace(",", ""))


def run_side(side: str, inputs_file: Path) -> None:
    """Inside valgrind: load the input into a fresh Redis, count only the measured loop."""
    with inputs_file.open("rb") as source:
        inputs = pickle.load(source)

    def counting(state: str) -> None:
        subprocess.run(["callgrind_control", "-i", state, str(os.getpid())], check=True)

    with tempfile.TemporaryDirectory(prefix="s2-instructions-") as tmp:
        workdir = Path(tmp)
        with RedisServer(workdir / "redis", appendonly=False) as server:
            client = server.client()
            bench.preload(client, inputs)
            counting("on")
            if side == "floor":
                bench.floor_pass(client, inputs, "floor")
            else:
                bench.run_burst(server, workdir, profile=False, checkpoint_ms=ONE_HOUR_MS)
            counting("off")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=15_000, help="pre-loaded, all streams")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--inputs", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side is not None:
        run_side(args.side, args.inputs)
        return
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not on PATH: install valgrind (Debian package valgrind)")
    arguments = "".join(f" {a}" for a in sys.argv[1:])
    print(f"command: uv run python benches/service_instructions.py{arguments}")
    # The paced segments service_bench.py needs are built too but not used here.
    inputs = bench.build_inputs(args.entries // len(bench.SYMBOLS), 100, 333)
    entries = sum(len(stream.segments[0].entries) for stream in inputs)
    with tempfile.TemporaryDirectory(prefix="s2-instructions-") as tmp:
        workdir = Path(tmp)
        inputs_file = workdir / "inputs.pickle"
        with inputs_file.open("wb") as sink:
            pickle.dump(inputs, sink)
        per_entry = {}
        for side in SIDES:
            per_entry[side] = count_side(side, inputs_file, workdir) / entries
            print(f"{side}: {per_entry[side]:,.0f} instructions per entry ({entries:,} entries)")
    floor, service = per_entry["floor"], per_entry["service"]
    print(
        f"floor / service = {floor / service:.1%}; the service's own work beyond the floor: "
        f"{service - floor:,.0f} instructions per entry"
    )


if __name__ == "__main__":
    main()
