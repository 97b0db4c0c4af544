"""Runs `vitkit demo` on a pseudo-terminal, as a user sees it, and reports silent stretches.

A step is "silent" when the terminal receives nothing: no line, no progress-bar redraw, no
spinner. The issue's goal is no silence longer than 5 seconds; this prints the longest gaps
with what was on screen just before each, and the wall time.

    python bench/demo_timeline.py [--quick] [--out DIR] [--limit 5]
"""

from __future__ import annotations

import argparse
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="demo-timeline-output")
    parser.add_argument("--limit", type=float, default=5.0, help="longest allowed gap, s")
    args = parser.parse_args()
    vitkit = Path(sys.executable).with_name("vitkit")
    command = [str(vitkit), "demo", "--out", args.out] + (["--quick"] if args.quick else [])
    controller, terminal = pty.openpty()
    env = {**os.environ, "COLUMNS": "80", "LINES": "40", "TERM": "xterm-256color"}
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=terminal, stderr=terminal, env=env)
    os.close(terminal)
    last, last_text, gaps = started, "", []
    while True:
        ready, _, _ = select.select([controller], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(controller, 65536)
            except OSError:
                break
            if not chunk:
                break
            now = time.monotonic()
            gaps.append((now - last, last_text))
            last = now
            text = ANSI.sub("", chunk.decode("utf-8", "replace")).strip()
            if text:
                last_text = text.splitlines()[-1][:100]
        elif process.poll() is not None:
            break
    process.wait()
    wall = time.monotonic() - started
    gaps.sort(key=lambda g: -g[0])
    print(f"exit code {process.returncode}, wall time {wall:.0f} s")
    print("longest silent stretches (seconds, after):")
    for seconds, text in gaps[:8]:
        print(f"  {seconds:5.1f}  {text}")
    worst = gaps[0][0] if gaps else 0.0
    print(f"longest silence {worst:.1f} s: " + ("ok" if worst <= args.limit else
                                                 f"over the {args.limit:g} s goal"))


if __name__ == "__main__":
    main()
