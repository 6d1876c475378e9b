"""One grid cell in a child process: ``python -m sctune.bench.child RECIPE.yaml RESULT.json``.

Runs the cell's recipe file with :func:`sctune.api.run` (``--resume`` continues an interrupted
run) and writes ``{"ok": ..., "error": ..., "run_dir": ...}`` to RESULT.json. The parent reads
the child's peak memory and CPU time from ``os.wait4``.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path


def main(argv: list[str]) -> int:
    recipe, result = argv[0], Path(argv[1])
    resume = "--resume" in argv[2:]
    from sctune import api
    from sctune.core.errors import SctuneError
    from sctune.core.rundir import handle_signals

    handle_signals()  # SIGTERM from the parent keeps '<run>.partial' for a later resume
    payload: dict[str, object]
    try:
        res = api.run(recipe, progress=False, resume=resume, log=lambda m: print(m, flush=True))
        payload = {"ok": True, "run_dir": str(res.run_dir)}
    except SctuneError as exc:
        print(exc.render(), file=sys.stderr, flush=True)
        payload = {"ok": False, "error": exc.message.splitlines()[0]}
    except Exception as exc:
        traceback.print_exc()
        payload = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    result.write_text(json.dumps(payload))
    return 0 if payload["ok"] else 1


if __name__ == "__main__":  # pragma: no cover - exercised through subprocesses
    sys.exit(main(sys.argv[1:]))
