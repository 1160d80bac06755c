"""`make bench`: run every benchmarks/bench_*.py and record the output with the machine it ran on.

Each benchmark prints its own figures; this writes them, verbatim, to docs/benchmark-results.md
(docs/performance.md discusses them and the decisions they drove).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kib / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{platform.system()} {platform.release()}, {os.cpu_count()} cores ({cpu}){memory}, Python {platform.python_version()}"


def main() -> int:
    only = sys.argv[1:]
    benches = sorted(ROOT.glob("benchmarks/bench_*.py"))
    if only:
        benches = [b for b in benches if any(name in b.name for name in only)]
    sections = [
        "# Benchmark results\n",
        f"Written by `make bench` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.\n",
        f"Machine: {machine()}.\n",
    ]
    failed = 0
    for bench in benches:
        command = f".venv/bin/python benchmarks/{bench.name}"
        print(f"== {command}", flush=True)
        started = time.monotonic()
        result = subprocess.run([sys.executable, str(bench)], cwd=ROOT, capture_output=True, text=True)
        elapsed = time.monotonic() - started
        print(result.stdout, flush=True)
        if result.returncode != 0:
            failed += 1
            print(result.stderr[-3000:], file=sys.stderr)
        status = "ok" if result.returncode == 0 else f"FAILED (exit {result.returncode})"
        sections.append(
            f"\n## {bench.stem}\n\n`{command}` — {status}, {elapsed:.0f} s\n\n```\n{result.stdout.strip()}\n```\n"
        )
    (ROOT / "docs" / "benchmark-results.md").write_text("".join(sections))
    print(f"wrote docs/benchmark-results.md ({len(benches)} benchmarks, {failed} failed)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
