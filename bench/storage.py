"""Storage: bytes per sample of one day of 1 Hz system + process + GPU + training metrics after compaction.

    python -m bench.storage [--quick]

Two days of data (1,382,400 samples each): bench/store_io.py's generator (the store helper's reference
data: system, process and GPU series) and bench/synthetic.py's (adds training series: a step counter,
a float32 loss, a float64 learning-rate schedule, tokens/s as a float64). Collector values are rounded
by ``catalog.quantize`` at the catalog's resolutions and tick times stamped by the recorder's
TickStamps, as ``llamamon record`` stores them; training values and times are kept as the job logs
them. Each day is written one file per partition and compacted by llamamon's ``compact()``; bytes are
every data file afterwards (run metadata excluded), also split into collector and job partitions.
The real write path (``StoreWriter.append`` per tick, a flush every 30 s of a fake clock, then
``compact()``) runs on a slice, to show what flushing adds before compaction and after it. Baselines from the same rows: CSV in the store's long schema (time, host, metric, value,
labels, step), CSV wide (one row per second, one column per series: what most loggers write),
psrecord's plain log format (fixed-width ``%12.3f`` columns, one line per second) and a real
Prometheus TSDB holding the same rows: ``promtool tsdb create-blocks-from openmetrics`` backfills them
into blocks (Gorilla XOR chunks and delta-of-delta times, as Prometheus itself stores them; times in
Prometheus's milliseconds) and every byte of the blocks is counted. The issue's target is the
1.37 B/sample Prometheus reaches on typical data: the measured figure says what it reaches on these
rows. Target: <= 1.37 B/sample.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMETHEUS_B_PER_SAMPLE = 1.37


def _rows_by_tick(tables: dict) -> list[list]:
    from llamamon.samples import Row, labels_from_str

    ticks: dict[int, list] = {}
    for group, table in tables.items():
        cols = table.to_pydict()
        labels = {s: labels_from_str(s) for s in set(cols["labels"])}
        for t, metric, value, lbl, step in zip(
            cols["time"], cols["metric"], cols["value"], cols["labels"], cols["step"], strict=True
        ):
            ts = t.timestamp()
            ticks.setdefault(int(ts), []).append(Row(ts, group, metric, value, labels[lbl], step))
    return [ticks[k] for k in sorted(ticks)]


def csv_long(tables: dict) -> int:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    buf = io.BytesIO()
    pacsv.write_csv(pa.concat_tables(tables.values()), buf)
    return buf.tell()


def wide(tables: dict):
    import polars as pl

    frame = pl.concat([pl.from_arrow(t) for t in tables.values()])
    frame = frame.with_columns(pl.col("time").dt.truncate("1s").alias("second"))
    return frame.pivot(on="metric", index="second", values="value", aggregate_function="first").sort("second")


def csv_wide(tables: dict) -> int:
    frame = wide(tables)
    return len(frame.write_csv().encode())


def psrecord_log(tables: dict) -> int:
    """psrecord's plain log: a header, then one line per sample of fixed-width %12.3f columns."""
    frame = wide(tables).drop("second")
    out = io.StringIO()
    out.write("# Elapsed time".ljust(16) + "".join(c[:12].rjust(13) for c in frame.columns) + "\n")
    for k, row in enumerate(frame.iter_rows()):
        out.write(f"{float(k):12.3f}" + "".join(f" {v:12.3f}" for v in row) + "\n")
    return len(out.getvalue().encode())


def through_writer(seconds: int) -> dict:
    """The real write path on a slice: StoreWriter.append per tick, flushes, close, compact()."""
    from bench.synthetic import HOST, RUN, day_tables
    from llamamon.store.compaction import compact
    from llamamon.store.writer import StoreWriter

    tables = day_tables(0, seconds)
    samples = sum(t.num_rows for t in tables.values())
    ticks = _rows_by_tick(tables)
    with tempfile.TemporaryDirectory(prefix="llamamon-bench-") as tmp:
        root = Path(tmp) / "m"
        now = [0.0]
        writer = StoreWriter(root, RUN, HOST, flush_interval=30.0, clock=lambda: now[0])
        t0 = time.perf_counter()
        for k, rows in enumerate(ticks):
            now[0] = float(k)
            writer.append(rows)
        writer.close()
        write_s = time.perf_counter() - t0
        flushed = list(root.glob("group=*/date=*/run=*/*.parquet"))
        flushed_bytes = sum(p.stat().st_size for p in flushed)
        compact(root, older_than=0.0)
        compacted_files = list(root.glob("group=*/date=*/run=*/*.parquet"))
        compacted = sum(p.stat().st_size for p in compacted_files)
        names_bytes = sum(len(_replaces(p)) for p in compacted_files)
    return {
        "seconds": seconds,
        "samples": samples,
        "write_s": write_s,
        "flush_files": len(flushed),
        "flush_bytes": flushed_bytes,
        "compacted_bytes": compacted,
        "replaces_metadata_bytes": names_bytes,
    }


def _replaces(path: Path) -> bytes:
    """The compacted file's footer list of the flush files it replaced (it grows with the flushes)."""
    import pyarrow.parquet as pq

    from llamamon.store import parquet

    footer = pq.read_metadata(path).metadata or {}
    return footer.get(parquet.REPLACES_Z_KEY, b"") + footer.get(parquet.REPLACES_KEY, b"")


def column_bytes(files: list[Path]) -> dict[str, int]:
    """Compressed bytes per column over ``files`` (column chunks), plus ``footer+`` for the rest."""
    import pyarrow.parquet as pq

    out: dict[str, int] = {}
    for path in files:
        meta = pq.read_metadata(path)
        chunks = 0
        for rg in range(meta.num_row_groups):
            group = meta.row_group(rg)
            for c in range(group.num_columns):
                col = group.column(c)
                out[col.path_in_schema] = out.get(col.path_in_schema, 0) + col.total_compressed_size
                chunks += col.total_compressed_size
        out["footer+"] = out.get("footer+", 0) + path.stat().st_size - chunks
    return out


def prometheus_tsdb(tables: dict) -> dict | None:
    """Bytes of the same rows in Prometheus's own TSDB, or None without ``promtool``: the rows as an
    OpenMetrics file, one gauge family per series, backfilled by ``promtool tsdb create-blocks-from``."""
    import numpy as np

    from llamamon.prometheus.snapshot import family_name, label_name

    promtool = shutil.which("promtool")
    if promtool is None:
        return None
    with tempfile.TemporaryDirectory(prefix="llamamon-bench-prom-") as tmp:
        source, blocks = Path(tmp) / "rows.om", Path(tmp) / "blocks"
        samples = 0
        with source.open("w") as out:
            for table in tables.values():
                times = table.column("time").cast("int64").to_numpy()
                values = table.column("value").to_numpy()
                keys = list(zip(table.column("metric").to_pylist(), table.column("labels").to_pylist(), strict=True))
                series: dict[tuple[str, str], list[int]] = {}
                for i, key in enumerate(keys):
                    series.setdefault(key, []).append(i)
                for (metric, labels), rows in series.items():
                    name = family_name(metric)
                    pairs = {"host": "bench", **json.loads(labels or "{}")}
                    selector = name + "{" + ",".join(f'{label_name(k)}="{v}"' for k, v in pairs.items()) + "}"
                    out.write(f"# TYPE {name} gauge\n")
                    index = np.array(rows)
                    index = index[np.argsort(times[index], kind="stable")]
                    # repr: the shortest text that reads back as the same double; times in seconds, to the us
                    out.writelines(
                        f"{selector} {v!r} {t // 1_000_000}.{t % 1_000_000:06d}\n"
                        for t, v in zip(times[index].tolist(), values[index].tolist(), strict=True)
                    )
                    samples += len(rows)
            out.write("# EOF\n")
        t0 = time.perf_counter()
        done = subprocess.run(
            [promtool, "tsdb", "create-blocks-from", "openmetrics", str(source), str(blocks)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"promtool tsdb create-blocks-from failed:\n{done.stderr[-2000:]}")
        files = [p for p in blocks.rglob("*") if p.is_file()]
        return {
            "samples": samples,
            "bytes": sum(p.stat().st_size for p in files),
            "chunk_bytes": sum(p.stat().st_size for p in files if p.parent.name == "chunks"),
            "blocks": len({p.relative_to(blocks).parts[0] for p in files}),
            "backfill_s": time.perf_counter() - t0,
            "version": (
                subprocess.run([promtool, "--version"], capture_output=True, text=True, check=False).stdout.split()
                or ["", "", "?"]
            )[2],
        }


def series_value_bytes(tables: dict) -> dict[str, float]:
    """Bytes per sample of each series' values alone, written as the compacted file writes ``value``."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from llamamon.store import parquet

    options = {k: v for k, v in parquet.COMPACT_OPTIONS.items() if k not in ("use_dictionary", "write_statistics")}
    out = {}
    for table in tables.values():
        keys = pc.binary_join_element_wise(table.column("metric"), table.column("labels"), "")
        for key in sorted(set(keys.to_pylist())):
            values = table.filter(pc.equal(keys, key)).column("value")
            buf = io.BytesIO()
            pq.write_table(pa.table({"value": values}), buf, **options, use_dictionary=False, write_statistics=False)
            size = pq.read_metadata(io.BytesIO(buf.getvalue())).row_group(0).column(0).total_compressed_size
            out[key] = size / len(values)
    return out


def store_io_tables(seconds: int) -> dict:
    """bench/store_io.py's generator (the store's own reference data: system, process and GPU series,
    "steady" profile, wall-clock ticks), split into the store's group partitions."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from bench.store_io import make_table
    from llamamon.catalog import group_of

    table = make_table(seconds, jitter=True, profile="steady")
    groups = pa.array([group_of(m) for m in table.column("metric").to_pylist()])
    return {g: table.filter(pc.equal(groups, g)) for g in dict.fromkeys(groups.to_pylist())}


def day(tables: dict) -> dict:
    """The span compacted: one file per partition, then compact() (which rewrites every partition from
    its rows alone, so the result is the file the span's 30 s flushes compact into, but for the footer's
    list of replaced files, measured separately by through_writer)."""
    from bench.synthetic import RUN, START
    from llamamon.store import parquet
    from llamamon.store.compaction import compact
    from llamamon.store.layout import data_file, utc_date

    with tempfile.TemporaryDirectory(prefix="llamamon-bench-") as tmp:
        root = Path(tmp) / "m"
        for group, table in tables.items():
            parquet.write_table(data_file(root, group, utc_date(START), RUN, "gen-0000"), parquet.sort_table(table))
        compact(root, older_than=0.0)
        files = list(root.glob("group=*/date=*/run=*/*.parquet"))
        compacted = sum(p.stat().st_size for p in files)
        columns = column_bytes(files)
        by_group = {
            group: (sum(p.stat().st_size for p in files if f"group={group}" in p.parts), table.num_rows)
            for group, table in tables.items()
        }
    return {
        "by_group": by_group,
        "samples": sum(t.num_rows for t in tables.values()),
        "files": len(files),
        "llamamon": compacted,
        "columns": columns,
        "series_value": series_value_bytes(tables),
        "csv_long": csv_long(tables),
        "csv_wide": csv_wide(tables),
        "psrecord": psrecord_log(tables),
        "prometheus": prometheus_tsdb(tables),
    }


def run(quick: bool = False) -> list:
    from bench.results import Figure, load1
    from bench.synthetic import day_tables

    seconds = 3600 if quick else 86_400
    span = "one day" if seconds == 86_400 else f"{seconds} s"
    w = through_writer(600 if quick else 3600)
    sources = [
        ("bench/store_io.py data: system, process, GPU", lambda: store_io_tables(seconds)),
        ("bench/synthetic.py data: system, process, GPU, training", lambda: day_tables(0, seconds)),
    ]
    figures = []
    for label, make in sources:
        before = load1()
        m = day(make())
        n = m["samples"]
        per = {k: m[k] / n for k in ("llamamon", "csv_long", "csv_wide", "psrecord")}
        extra = w["replaces_metadata_bytes"] / w["flush_files"] * (seconds // 30) * m["files"] / n
        by_column = ", ".join(f"{k} {v / n:.3f}" for k, v in m["columns"].items() if v / n >= 0.0005)
        job = [g for g in m["by_group"] if g in ("training", "inference", "custom")]
        split = (
            "".join(
                f"{label} {sum(b for g, (b, _) in m['by_group'].items() if (g in job) == is_job) / rows:.2f} B/sample; "
                for label, is_job in (("collector partitions alone", False), ("job partitions alone", True))
                if (rows := sum(r for g, (_, r) in m["by_group"].items() if (g in job) == is_job))
            )
            if job
            else ""
        )
        by_series = ", ".join(f"{k} {v:.2f}" for k, v in sorted(m["series_value"].items(), key=lambda kv: -kv[1]))
        prom = m["prometheus"]
        peers = {
            "CSV (store's long schema)": per["csv_long"],
            "CSV (wide, 1 row/s)": per["csv_wide"],
            "psrecord log format": per["psrecord"],
        }
        ratios = {}
        if prom is not None:
            if prom["samples"] != n:
                raise SystemExit(f"the OpenMetrics file held {prom['samples']} samples, not {n}")
            peers["Prometheus TSDB (promtool backfill, same rows)"] = prom["bytes"] / n
            ratios["Prometheus, same rows"] = per["llamamon"] / (prom["bytes"] / n)
            prom_note = (
                f"Prometheus {prom['version']}: the same {n:,} samples backfilled by promtool into "
                f"{prom['blocks']} two-hour blocks take {prom['bytes']:,} B, of which chunks "
                f"{prom['chunk_bytes'] / n:.2f} B/sample (the rest index and metadata; a live server adds its WAL). "
            )
        else:
            prom_note = "promtool not installed: no Prometheus TSDB measured on these rows. "
        peers["Prometheus TSDB (the issue's typical figure)"] = PROMETHEUS_B_PER_SAMPLE
        ratios["Prometheus, typical figure"] = per["llamamon"] / PROMETHEUS_B_PER_SAMPLE
        figures.append(
            Figure(
                name=f"Storage after compaction, {span} at 1 Hz x 16 series ({label})",
                unit="B/sample",
                llamamon=per["llamamon"],
                peers=peers,
                ratios={
                    **ratios,
                    "CSV wide": per["llamamon"] / per["csv_wide"],
                    "psrecord": per["llamamon"] / per["psrecord"],
                },
                target="<= 1.37 B/sample",
                met=per["llamamon"] <= PROMETHEUS_B_PER_SAMPLE,
                runs=1,
                load=(before, load1()),
                note=(
                    f"{n:,} samples compacted by compact() into {m['files']} files, {m['llamamon']:,} B. "
                    f"{split}B/sample by column: {by_column} (the rest ~0). Value bytes per sample of each series "
                    f"alone: {by_series}. {prom_note}"
                    f"The real write path on the first {w['seconds']} s of bench/synthetic.py "
                    f"(StoreWriter.append per tick, 30 s flushes, compact()): {w['flush_files']} flush files at "
                    f"{w['flush_bytes'] / w['samples']:.2f} B/sample -> "
                    f"{w['compacted_bytes'] / w['samples']:.2f} B/sample compacted; "
                    f"{w['samples'] / w['write_s']:,.0f} samples/s through the writer. The compacted footer lists "
                    f"the flush files it replaced ({w['replaces_metadata_bytes'] / w['flush_files']:.0f} B each): "
                    f"the span's {seconds // 30:,} flushes per partition would add ~{extra:.2f} B/sample to this "
                    "figure. Sizes are deterministic (fixed seeds): one run."
                ),
                detail={"compacted": m, "through_writer": w},
            )
        )
    return figures


def main() -> None:
    sys.path.insert(0, str(REPO))
    from bench.results import standalone

    standalone(run, __doc__, repeat=False)


if __name__ == "__main__":
    main()
