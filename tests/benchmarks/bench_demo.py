"""Wall time of the README's main command, ``cryptorlpm demo``, on the embedded default.

Runs the command as a user would (a subprocess, the bundled config/demo.toml) into a temporary
output folder and prints its wall time. ``make demo`` adds the one-off install on a fresh
machine, which this does not measure.

Run: ``.venv/bin/python tests/benchmarks/bench_demo.py``
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    out = Path(tempfile.mkdtemp(prefix="bench-demo-"))
    env = {**os.environ, "CRYPTORLPM__DATA__DIR": str(out / "var"), "COLUMNS": "160"}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "bot.cli.main", "demo", "--out", str(out / "run")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        print(done.stdout[-3000:], done.stderr[-3000:])
        raise SystemExit(f"cryptorlpm demo failed with exit code {done.returncode}")
    print(done.stdout.strip().splitlines()[-1])
    print(f"cryptorlpm demo wall time: {seconds:.1f} s ({os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
