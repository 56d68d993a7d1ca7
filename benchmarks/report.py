"""Reporting for ``benchmarks/run.py``: medians per (scenario, broker), the figures of a
scenario relative to its baseline scenario, the Markdown table, the machine and versions, and
the cProfile summaries of ``--profile``."""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import os
import platform
import pstats
import socket
import statistics
import subprocess
from pathlib import Path
from typing import Final

from brokers import RELAXED_NOTE, mosquitto_exe
from scenarios import (
    FAN_IN_PUBLISHERS,
    QUICK_SECURITY_PUBLISHERS,
    SCENARIOS,
    Metric,
    Sample,
)

ROOT: Final = Path(__file__).resolve().parent.parent
PROFILE_TOP: Final = 30


def summarise(
    name: str, kind: str, samples: list[Sample], params: dict[str, int]
) -> dict[str, object]:
    """One JSON row: the median of every figure over the runs, and the runs' primary ones."""
    scenario = SCENARIOS[name]
    medians = {
        key: round(float(statistics.median(s[key] for s in samples)), 3)
        for key in samples[0]
        if key not in ("clients", "lost")
    }
    if scenario.derive is not None:
        medians.update(scenario.derive(medians))
    row: dict[str, object] = {
        "scenario": name,
        "broker": kind,
        "description": scenario.description.format(**params),
        **medians,
        "clients": int(samples[0]["clients"]),
        "connections_lost": [int(s["lost"]) for s in samples],
        "runs": len(samples),
    }
    for key in scenario.primary:
        row[f"{key}_runs"] = [round(s[key], 3) for s in samples]
    return row


def _figures(row: dict[str, object]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in row.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def relate(rows: list[dict[str, object]]) -> None:
    """Add to each row whose scenario has a ``baseline`` the figures ``relate`` derives from
    its medians and those of the baseline's row for the same broker, when that row exists."""
    by = {(str(r["scenario"]), str(r["broker"])): r for r in rows}
    for row in rows:
        scenario = SCENARIOS[str(row["scenario"])]
        base = by.get((scenario.baseline, str(row["broker"])))
        if scenario.relate is not None and base is not None:
            row.update(scenario.relate(_figures(row), _figures(base)))


def machine() -> dict[str, object]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError), open("/proc/meminfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
                break
    return {
        "host": socket.gethostname(),
        "cores": os.cpu_count(),
        "cpu_model": model,
        "ram_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
    }


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("bastion", "uvloop"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
        if commit:
            out["bastion_commit"] = commit
    with contextlib.suppress(OSError, subprocess.SubprocessError, SystemExit):
        text = subprocess.run(
            [mosquitto_exe(), "-h"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
        out["mosquitto"] = text.splitlines()[0].removeprefix("mosquitto version ").strip()
    return out


def _fmt(x: float, unit: str) -> str:
    if unit in ("ms", "s"):
        return f"{x:,.2f}"
    if unit in ("kib", "mib"):
        return f"{x:,.1f}"
    if unit == "pct":
        return f"{x:.1f} %"
    if unit == "x":
        return f"{x:.2f}"
    return f"{x:,.0f}"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "n/a"


def _cell(row: dict[str, object], metric: Metric) -> tuple[str, float]:
    value = row.get(metric.key)
    if not isinstance(value, int | float):
        return "n/a", 0.0
    if metric.unit == "cpu":
        other = row.get(metric.key2)
        second = f"{float(other):.2f}" if isinstance(other, int | float) else "?"
        return f"{float(value):.2f} / {second}", float(value)
    return _fmt(float(value), metric.unit), float(value)


def table_rows(
    rows: list[dict[str, object]], names: list[str], params: dict[str, int]
) -> list[str]:
    by = {(str(r["scenario"]), str(r["broker"])): r for r in rows}
    lines = []
    for name in names:
        b, q = by.get((name, "bastion")), by.get((name, "mosquitto"))
        if b is None or q is None:
            continue
        for metric in SCENARIOS[name].metrics:
            (bt, bv), (qt, qv) = _cell(b, metric), _cell(q, metric)
            ratio = _ratio(bv, qv) if metric.ratio else ""
            lines.append(f"| {name} | {metric.label.format(**params)} | {bt} | {qt} | {ratio} |")
    return lines


def noise(rows: list[dict[str, object]], names: list[str]) -> str:
    """How much CPU other processes used during the windows (median of the runs, the most of
    a scenario's figures), per scenario and broker."""
    parts = []
    for name in names:
        cells = []
        for kind in ("bastion", "mosquitto"):
            row = next((r for r in rows if r["scenario"] == name and r["broker"] == kind), {})
            values = [
                float(v)
                for k, v in row.items()
                if k.startswith("other_cpu_share") and isinstance(v, int | float)
            ]
            cells.append(f"{max(values):.2f}" if values else "-")
        if any(c != "-" for c in cells):
            parts.append(f"{name} {' / '.join(cells)}")
    if not parts:
        return ""
    return (
        "Other processes' CPU during the measurement windows (cores, Bastion / Mosquitto runs; "
        "noise, not part of either broker): " + ", ".join(parts) + "."
    )


def notes(names: list[str], meta: dict[str, object]) -> list[str]:
    out = [RELAXED_NOTE]
    out += [SCENARIOS[n].note for n in names if SCENARIOS[n].note]
    params = meta.get("params")
    count = params.get("connections") if isinstance(params, dict) else None
    if "connections" in names and meta.get("quick") and isinstance(count, int):
        out.append(f"Quick mode: the connections scenario opened {count:,} clients, not 5,000.")
    if "security" in names and meta.get("quick"):
        out.append(
            f"Quick mode: the security scenario ran fan_in with {QUICK_SECURITY_PUBLISHERS} "
            f"publishers, not {FAN_IN_PUBLISHERS} (under Bastion's default limits a ceiling of "
            f"{QUICK_SECURITY_PUBLISHERS * 1000:,} msgs/s plus the bursts)."
        )
    return out


def markdown(rows: list[dict[str, object]], meta: dict[str, object]) -> str:
    m = meta["machine"]
    v = meta["versions"]
    names = meta["scenarios"]
    params = meta["params"]
    assert isinstance(m, dict) and isinstance(v, dict) and isinstance(names, list)
    assert isinstance(params, dict)
    lines = [
        f"Measured {meta['date']} on {m['host']}: {m['cores']} cores ({m['cpu_model']}), "
        f"{m['ram_gib']} GiB RAM, Linux {m['kernel']}; Python {v['python']}, "
        f"uvloop {v['uvloop']}, Bastion {v['bastion']} ({v.get('bastion_commit', '?')}), "
        f"Mosquitto {v.get('mosquitto', '?')}. {meta['mode']}; medians of {meta['repeat']} "
        f"run(s) of {meta['duration']} s after {meta['warmup']} s warm-up, fresh broker per run, "
        f"order alternated. {meta['pinning']}",
        "",
        "| scenario | metric | Bastion | Mosquitto | Bastion/Mosquitto |",
        "|---|---|---:|---:|---:|",
        *table_rows(rows, names, params),
        "",
    ]
    lines += [f"{note}\n" for note in (*notes(names, meta), noise(rows, names)) if note]
    return "\n".join(lines)


def write_profiles(profiles: dict[str, list[Path]], out_dir: Path) -> list[Path]:
    """Merge each label's cProfile runs into ``<label>.pstats`` and write ``<label>.txt``
    with the top functions by tottime and by cumtime; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for label, files in sorted(profiles.items()):
        if not files:
            continue
        stats = pstats.Stats(str(files[0]))
        for extra in files[1:]:
            stats.add(str(extra))
        target = out_dir / f"{label}.pstats"
        stats.dump_stats(str(target))
        text = io.StringIO()
        text.write(f"{label}: Bastion under cProfile, {len(files)} run(s) merged\n\n")
        for key in ("tottime", "cumulative"):
            text.write(f"===== top {PROFILE_TOP} by {key} =====\n")
            pstats.Stats(str(target), stream=text).sort_stats(key).print_stats(PROFILE_TOP)
        (out_dir / f"{label}.txt").write_text(text.getvalue())
        written += [target, out_dir / f"{label}.txt"]
    return written
