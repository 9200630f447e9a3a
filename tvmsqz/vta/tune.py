"""Tiling search for VTA layers, MetaSchedule-style: an evolutionary search over the tiling
space of each distinct layer shape, every candidate scored by the simulator's cycle estimate
(timing-only simulation of the real instruction stream: the same program a compile emits).

Search per layer shape: the default tiling and the database's best so far seed the population;
then each trial either samples a random valid tiling (exploration, 25% and until 8 are known) or
mutates one or two knobs of a tournament-picked parent from the 8 best, sometimes crossed with
another (exploitation). Tilings already measured are never measured again.

Database (JSON), keyed by hardware configuration and layer shape, resumable:

    {"format": "tvmsqz-vta-tilings/1",
     "records": {"<config fingerprint>/<shape key>": {
         "shape": {...}, "best": {tiling}, "cycles": int, "default_cycles": int,
         "trials": int, "measured": [[{tiling}, cycles], ...]}}}
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from pathlib import Path

from tvmsqz.errors import TvmsqzError
from tvmsqz.fsutil import atomic_write

from .config import VTAConfig
from .lower import Tiling, TilingError, is_valid

# A layer is a `lower.ConvLayer` or a `pool.PoolLayer`: both offer shape_key(), shape_dict(),
# lower(), check_tiling(), default_tiling() and tiling_space(), which is all the search uses.

FORMAT = "tvmsqz-vta-tilings/1"

#: The database's file name in a schedules folder, unless the target names another ("tiling_db").
TILINGS_FILE = "tilings.json"


def tiling_db_name(data: dict | None) -> str:
    """The tiling database's file name of a VTA target (its data's "tiling_db")."""
    return (data or {}).get("tiling_db", TILINGS_FILE)


def shipped_tiling_db(schedules_dir: Path | None, data: dict | None = None) -> Path | None:
    """A VTA target's shipped tiling database (`schedules/<its schedules>/tilings.json`), or None
    when the target names no schedules folder. The VTA pipeline passes `spec.schedules_dir` and
    `spec.data`; `compile_vta` without a database uses `default_tiling_db()`."""
    return Path(schedules_dir) / tiling_db_name(data) if schedules_dir is not None else None


def default_tiling_db() -> Path:
    """The shipped database of the default configuration (`schedules/vta/tilings.json`, the
    `vta` target's): what `compile_vta` looks tilings up in when no target or database is named.
    Records are keyed by the hardware configuration, so another configuration finds none there."""
    from tvmsqz.paths import SCHEDULES_DIR

    return SCHEDULES_DIR / "vta" / TILINGS_FILE


def config_fingerprint(cfg: VTAConfig) -> str:
    hw = {k: v for k, v in cfg.to_json().items() if k.startswith("LOG_")}
    cyc = cfg.to_json()["cycles"]
    blob = json.dumps({"hw": hw, "cycles": cyc}, sort_keys=True).encode()
    return "vta-" + hashlib.sha256(blob).hexdigest()[:12]


def record_key(layer, cfg: VTAConfig) -> str:
    return f"{config_fingerprint(cfg)}/{layer.shape_key()}"


def load_db(path: Path | None) -> dict:
    if path is None or not Path(path).is_file():
        return {"format": FORMAT, "records": {}}
    try:
        db = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise TvmsqzError(f"tiling database {path} is not valid JSON: {exc}") from None
    if db.get("format") != FORMAT:
        raise TvmsqzError(f"{path} is not a VTA tiling database ({FORMAT})")
    return db


def save_db(db: dict, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(db, indent=1))


def lookup(db: dict, layer, cfg: VTAConfig) -> Tiling | None:
    rec = db.get("records", {}).get(record_key(layer, cfg))
    if not rec:
        return None
    t = Tiling.from_json(rec["best"])
    return t if is_valid(layer, t, cfg) else None


def measure(layer, tiling: Tiling, cfg: VTAConfig) -> int | None:
    """Simulated cycles of `layer` lowered with `tiling` (None when it does not fit)."""
    try:
        prog = layer.lower(tiling, cfg)
    except TilingError:
        return None
    _, stats = prog.run(None, cfg, timing_only=True)
    return int(stats.cycles)


def _key(t: Tiling) -> str:
    return json.dumps(t.to_json(), sort_keys=True)


def _random(space: dict, rng: random.Random, layer, cfg) -> Tiling | None:
    for _ in range(200):
        t = Tiling(**{k: rng.choice(v) for k, v in space.items()})
        if is_valid(layer, t, cfg):
            return t
    return None


def _mutate(t: Tiling, other: Tiling | None, space: dict, rng: random.Random) -> Tiling:
    d = t.to_json()
    if other is not None and rng.random() < 0.3:
        o = other.to_json()
        for k in d:
            if rng.random() < 0.5:
                d[k] = o[k]
    for k in rng.sample(list(space), rng.choice([1, 1, 2])):
        vals = space[k]
        if k in ("h", "w", "oc", "ic") and d[k] in vals and rng.random() < 0.7:
            i = vals.index(d[k]) + rng.choice([-2, -1, 1, 2])
            d[k] = vals[max(0, min(len(vals) - 1, i))]
        else:
            d[k] = rng.choice(vals)
    return Tiling(**d)


def search_layer(layer, cfg: VTAConfig, trials: int, record: dict | None = None, seed: int = 0) -> dict:
    """Run `trials` new measurements for one layer; returns the updated record."""
    rng = random.Random(f"{seed}/{layer.shape_key()}/{len((record or {}).get('measured', []))}")
    space = layer.tiling_space(cfg)
    record = dict(record or {})
    measured = {_key(Tiling.from_json(t)): c for t, c in record.get("measured", [])}
    results = [(Tiling.from_json(t), c) for t, c in record.get("measured", []) if c is not None]
    if "default_cycles" not in record:
        d = layer.default_tiling(cfg)
        c = measure(layer, d, cfg)
        record["default"] = d.to_json()
        record["default_cycles"] = c
        if _key(d) not in measured:
            measured[_key(d)] = c
            results.append((d, c))
    done = 0
    attempts = 0
    while done < trials and attempts < trials * 50:
        attempts += 1
        top = sorted(results, key=lambda r: r[1])[:8]
        if len(top) < 8 and rng.random() < 0.5 or rng.random() < 0.25:
            cand = _random(space, rng, layer, cfg)
        else:
            a = min(rng.sample(top, min(2, len(top))), key=lambda r: r[1])[0]
            b = rng.choice(top)[0]
            cand = _mutate(a, b, space, rng)
        if cand is None or _key(cand) in measured or not is_valid(layer, cand, cfg):
            continue
        c = measure(layer, cand, cfg)
        measured[_key(cand)] = c
        done += 1
        if c is not None:
            results.append((cand, c))
    best = min(results, key=lambda r: r[1])
    record.update(
        {
            "shape": layer.shape_dict(),
            "best": best[0].to_json(),
            "cycles": best[1],
            "trials": record.get("trials", 0) + done,
            "measured": [[json.loads(k), c] for k, c in measured.items()],
        }
    )
    return record


def tune_layers(layers: list, cfg: VTAConfig, trials: int, db_path: Path, *, progress=None, seed: int = 0) -> dict:
    """Spread `trials` over the distinct layer shapes; saves the database after each shape."""
    db = load_db(db_path)
    unique = {}
    for L in layers:
        unique.setdefault(record_key(L, cfg), L)
    if not unique:
        raise TvmsqzError("nothing to tune: no VTA layer")
    per = max(1, trials // len(unique))
    summary = []
    t0 = time.time()
    for n, (key, L) in enumerate(unique.items()):
        rec = search_layer(L, cfg, per, db["records"].get(key), seed=seed)
        db["records"][key] = rec
        save_db(db, db_path)
        summary.append(
            {
                "layer": L.name,
                "key": key,
                "default_cycles": rec["default_cycles"],
                "best_cycles": rec["cycles"],
                "best": rec["best"],
                "trials": rec["trials"],
            }
        )
        if progress:
            progress(n + 1, len(unique), summary[-1])
    return {
        "database": str(db_path),
        "shapes": len(unique),
        "trials_per_shape": per,
        "seconds": round(time.time() - t0, 2),
        "layers": summary,
        "default_cycles": sum(s["default_cycles"] for s in summary),
        "best_cycles": sum(s["best_cycles"] for s in summary),
    }
