"""What RUN/ remembers between runs of ``ldm fit``: the plan it was started with and which stages are done.

``RUN/plan.json`` holds the plan, the data survey and the options that decided them; a rerun whose plan differs
(another budget, other data, another override) is refused in one line naming what changed, unless ``--restart``
empties RUN/ first. ``RUN/stages.json`` holds, per stage, whether it finished and the seconds spent in it (all
attempts together), so a rerun skips finished stages and the trainers resume the unfinished one.
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ldmkit.errors import LdmkitError

PLAN_FILE, STAGES_FILE = "plan.json", "stages.json"
STAGES = ("autoencoder", "latents", "diffusion", "model", "evaluation", "report")
# Everything ldm fit writes into RUN/ (--restart removes exactly these).
ENTRIES = (PLAN_FILE, STAGES_FILE, "autoencoder", "latents", "diffusion", "eval", "model", "report.html", "report",
           ".write-test")
IGNORED_KEYS = ("estimate",)  # recomputed, not a choice: a plan does not change when only its estimate does


class PlanChanged(LdmkitError):
    """RUN/ was started under another plan."""


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix[:-1]: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(_flat(value, f"{prefix}{key}."))
    return out


def plan_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """``key old -> new`` for every plan-relevant value that differs."""
    old, new = _flat(before), _flat(after)
    keys = sorted(k for k in set(old) | set(new)
                  if old.get(k) != new.get(k) and not any(k.startswith(f"plan.{i}.") for i in IGNORED_KEYS))
    return [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys]


def check_or_write_plan(run: Path, record: dict[str, Any], *, restart: bool, write: bool = True) -> bool:
    """Compare ``record`` ({"plan", "options", "survey"}) with RUN/plan.json: write it when RUN/ is new (or
    ``restart``), return True when resuming, raise :class:`PlanChanged` when it differs."""
    path = run / PLAN_FILE
    if restart:
        clear_run(run)
    elif path.is_file():
        before = json.loads(path.read_text())
        changes = plan_changes({k: before.get(k) for k in ("plan", "options")},
                               {k: record.get(k) for k in ("plan", "options")})
        if changes:
            shown = "; ".join(changes[:4]) + (f"; and {len(changes) - 4} more" if len(changes) > 4 else "")
            raise PlanChanged(f"{run} was started under another plan ({shown}); rerun with the options it was "
                              "started with to resume, or add --restart to start it over")
        return True
    elif run.is_dir() and any(p.name not in ENTRIES for p in run.iterdir()):
        foreign = sorted(p.name for p in run.iterdir() if p.name not in ENTRIES)[:3]
        raise LdmkitError(f"--out {run} holds files ldm fit did not write ({', '.join(foreign)}); choose a new or "
                          "empty directory")
    if write:
        run.mkdir(parents=True, exist_ok=True)
        _write_json(path, record)
    return False


def clear_run(run: Path) -> None:
    """Remove what ldm fit wrote into ``run`` (nothing else)."""
    for name in ENTRIES:
        target = run / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def read_stages(run: Path) -> dict[str, dict[str, Any]]:
    path = run / STAGES_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def stage_done(run: Path, stage: str) -> bool:
    return bool(read_stages(run).get(stage, {}).get("done"))


@contextmanager
def stage(run: Path, name: str, *, main: bool = True, note: str = "") -> Iterator[dict[str, Any]]:
    """Time one stage; on success mark it done. The yielded dict's entries are stored with the stage."""
    extra: dict[str, Any] = {}
    start = time.perf_counter()
    done = False
    try:
        yield extra
        done = True
    finally:
        if main:
            stages = read_stages(run)
            entry = stages.get(name, {"seconds": 0.0, "attempts": 0})
            entry["seconds"] = round(entry.get("seconds", 0.0) + time.perf_counter() - start, 2)
            entry["attempts"] = entry.get("attempts", 0) + 1
            entry["done"] = done
            if note:
                entry["note"] = note
            entry.update(extra)
            stages[name] = entry
            _write_json(run / STAGES_FILE, stages)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


__all__ = ["ENTRIES", "PLAN_FILE", "STAGES", "STAGES_FILE", "PlanChanged", "check_or_write_plan", "clear_run",
           "plan_changes", "read_stages", "stage", "stage_done"]
