"""Python opcodes executed per function in a running daemon, for a few seconds: where a poll's work goes,
counted (the same from run to run), not sampled.

Not imported by anything: Python imports a `sitecustomize` module found on its path at start-up. To use it,
make a copy of a tree with this file at its root, run a bench's daemon from that copy, and send the daemon
SIGUSR1 twice: the first starts counting, the second stops and writes `opcodes.json` (a list of [qualified
name, file, first line, opcodes, calls], calls counting each resumption of a coroutine) into the directory
named by DCIM_OPCOUNT_OUT (default: the current one). Counting slows the daemon tenfold or more: use few
devices (50 at 1 s).

    git archive HEAD | tar -x -C /tmp/opc && cp bench/opcount/sitecustomize.py /tmp/opc/
    python bench/bench_saturation.py --tree /tmp/opc --sizes 50 --no-rules --no-racks \\
        --profile bench-pdu-f32 --meter-values --seconds 40 &
    sleep 20; kill -USR1 $(pgrep -f 'dcim.app.cli run'); sleep 10; kill -USR1 $(pgrep -f 'dcim.app.cli run')

Only the main thread (the event loop) is counted; only processes started as `dcim.app.cli` are touched.
"""

from __future__ import annotations

import sys

if "dcim.app.cli" in " ".join(getattr(sys, "orig_argv", [])):
    import collections
    import json
    import os
    import signal
    from types import CodeType, FrameType
    from typing import Any

    _opcodes: collections.Counter[CodeType] = collections.Counter()
    _calls: collections.Counter[CodeType] = collections.Counter()
    _on = [False]

    def _local(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "opcode":
            _opcodes[frame.f_code] += 1
        return _local

    def _global(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "call":
            frame.f_trace_opcodes = True
            _calls[frame.f_code] += 1
            return _local
        return None

    def _toggle(signum: int, frame: FrameType | None) -> None:
        if not _on[0]:
            _on[0] = True
            _opcodes.clear()
            _calls.clear()
            sys.settrace(_global)
            return
        sys.settrace(None)
        _on[0] = False
        rows = [[c.co_qualname, c.co_filename, c.co_firstlineno, n, _calls[c]] for c, n in _opcodes.items()]
        path = os.path.join(os.environ.get("DCIM_OPCOUNT_OUT", "."), "opcodes.json")
        with open(path, "w") as out:
            json.dump(rows, out)

    signal.signal(signal.SIGUSR1, _toggle)
