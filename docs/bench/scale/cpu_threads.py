"""CPU seconds per thread kind of a running `serve` over a window: Python threads named by ``py-spy dump``, the rest
(native pools: ONNX Runtime, MediaPipe, x264, OpenCV) by their comm. Usage: ``python cpu_threads.py PID SECONDS``
(needs ``pip install py-spy``)."""

import collections
import os
import re
import subprocess
import sys
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def names(pid: int) -> dict[int, str]:
    out = subprocess.run(["py-spy", "dump", "-p", str(pid), "--nonblocking"], capture_output=True, text=True).stdout
    found = {}
    for tid, name in re.findall(r'^Thread (\d+) \([^)]*\): "([^"]*)"', out, re.M):
        name = re.sub(r"_\d+$", "", re.sub(r"peer-[0-9a-f]+-", "peer-", name))
        found[int(tid)] = name
    return found


def cpu(pid: int) -> dict[int, tuple[float, str]]:
    seconds = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        seconds[int(task.name)] = ((int(fields[11]) + int(fields[12])) / TICK, comm)
    return seconds


def main() -> None:
    pid, window = int(sys.argv[1]), float(sys.argv[2])
    named, before, t0 = names(pid), cpu(pid), time.time()
    time.sleep(window)
    after = cpu(pid)
    named.update(names(pid))
    wall = time.time() - t0
    per_kind: collections.Counter[str] = collections.Counter()
    for tid, (c, comm) in after.items():
        per_kind[named.get(tid, "native:" + comm)] += c - before.get(tid, (0.0, comm))[0]
    total = sum(per_kind.values())
    print(f"total {total / wall:.2f} cores over {wall:.1f} s")
    for kind, c in per_kind.most_common(20):
        if c > 0:
            print(f"{c / wall:6.3f} cores {c / total * 100:5.1f}%  {kind}")


if __name__ == "__main__":
    main()
