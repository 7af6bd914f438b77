"""The history evaluator's values: per series and tick a value and a truth flag (``Vec``), and how two of
them combine across an operator (label matching, ``and``/``or``/``unless``) without a hash join where a
search into sorted keys does.

Why apart from the compiler: joining millions of (sid, tick) rows is where a naive polars join costs
most; the tricks (packed keys, gathers by position) are kept together with the one place that needs them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llamamon.rules.promql import matching, pair_series

if TYPE_CHECKING:
    import polars as pl


@dataclass(slots=True)
class Vec:
    df: pl.DataFrame  # k i64, sid u32, value f64, ok bool
    labels: list[dict[str, str]]  # per (local) sid


def empty_vec() -> pl.DataFrame:
    import polars as pl

    return pl.DataFrame(schema={"k": pl.Int64, "sid": pl.UInt32, "value": pl.Float64, "ok": pl.Boolean})


def pack(sid: str = "sid") -> pl.Expr:
    """(sid, k) as one i64 that sorts like the pair; only for frames where ``packable`` holds."""
    import polars as pl

    return pl.col(sid).cast(pl.Int64) * 2**32 + pl.col("k")


def packable(*frames: pl.DataFrame) -> bool:
    return all(df.height == 0 or (df["k"].min() >= 0 and df["k"].max() < 2**32) for df in frames)  # type: ignore[operator]


def _lookup(j: pl.DataFrame, r: pl.DataFrame, how: str) -> pl.DataFrame | None:
    """``j.join(r, on=[k, r_sid], how=how)`` for the r_ok column by binary search, None if r has duplicates.

    Why: vectors come out ordered by (sid, k) with one row per pair; a search into the sorted packed
    keys (numpy's, on plain arrays) is several times cheaper than hashing millions of rows for a join.
    """
    import numpy as np
    import polars as pl

    rkey = r.select(pack("r_sid")).to_series().to_numpy()
    if not (np.diff(rkey) > 0).all():
        return None
    lkey = j.select(pack("r_sid").fill_null(-1)).to_series().to_numpy()  # -1: no partner, no match
    if rkey.size == 0:
        if how == "inner":
            return j.clear().with_columns(r_ok=pl.lit(None, pl.Boolean))
        return j.with_columns(r_ok=pl.lit(None, pl.Boolean))
    pos = _positions(rkey, lkey)
    hit = rkey[pos] == lkey
    if how == "inner":
        return j.filter(pl.Series(hit)).with_columns(r_ok=r["r_ok"].gather(pos[hit]))
    r_ok = r["r_ok"].gather(pos)
    return j.with_columns(r_ok=pl.when(pl.Series(hit)).then(r_ok).otherwise(None))


def _positions(rkey: Any, lkey: Any) -> Any:
    """Where each of ``lkey`` is in the strictly increasing packed keys ``rkey`` (any in-range index where absent).

    Why not always a binary search: a series usually holds every tick of its span, so a key's place is
    its series' first row plus its tick's distance from the series' first tick; one gather per key.
    """
    import numpy as np

    r_sid, r_k = rkey >> 32, rkey & 0xFFFFFFFF
    starts = np.flatnonzero(np.diff(r_sid, prepend=-1))
    ends = np.append(starts[1:], rkey.size)
    sids = r_sid[starts]
    if not (r_k[ends - 1] - r_k[starts] == ends - starts - 1).all() or sids[-1] > 2**20:
        return np.searchsorted(rkey, lkey, side="left").clip(0, rkey.size - 1)
    first_row = np.zeros(sids[-1] + 2, dtype=np.int64)
    first_k = np.zeros(sids[-1] + 2, dtype=np.int64)
    first_row[sids], first_k[sids] = starts, r_k[starts]
    l_sid = np.clip(lkey >> 32, -1, sids[-1] + 1)  # (-1: no partner; the checks against rkey miss it)
    pos = first_row[l_sid] + (lkey & 0xFFFFFFFF) - first_k[l_sid]
    return np.clip(pos, 0, rkey.size - 1, out=pos)


def compare(op: str, a: pl.Expr, b: pl.Expr) -> pl.Expr:
    # Why explicit NaN handling: polars orders NaN above everything; PromQL follows IEEE (NaN compares false).
    nan = a.is_nan() | b.is_nan()
    if op == "!=":
        return nan | (a != b)
    cmp = {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b, "==": a == b}[op]
    return cmp & ~nan


def concat(a: Vec, b: Vec) -> Vec:
    """Both vectors' series side by side (b's renumbered after a's)."""
    import polars as pl

    if not b.labels:
        return a
    if not a.labels:
        return b
    shifted = b.df.with_columns(pl.col("sid") + len(a.labels))
    return Vec(pl.concat([a.df, shifted.cast(a.df.schema)]), [*a.labels, *b.labels])


def pairs_frame(
    left: list[dict[str, str]], right: list[dict[str, str]], *, exact: bool = False
) -> tuple[pl.DataFrame, list[dict[str, str]]]:
    """``promql.pair_series`` as a frame (l_sid, r_sid, o_sid) to join on, and the merged labels."""
    import polars as pl

    rows, out = pair_series(left, right, exact=exact)
    pairs = pl.DataFrame(rows, schema={"l_sid": pl.UInt32, "r_sid": pl.UInt32, "o_sid": pl.UInt32}, orient="row")
    return pairs, out


def set_op(op: str, left: Vec, right: Vec) -> Vec:
    import polars as pl

    links = pl.DataFrame(
        list(matching(left.labels, right.labels)),
        schema={"sid": pl.UInt32, "r_sid": pl.UInt32},
        orient="row",
    )
    r = right.df.rename({"sid": "r_sid", "value": "r_value", "ok": "r_ok"})
    if op in ("and", "unless") and links["sid"].is_unique().all():
        # Why: one partner per left series (the usual case) needs a single join, no grouping.
        how = "inner" if op == "and" else "left"
        # Why a gather, not a join: the partner of each left series is one small lookup table.
        partner_of = [None] * len(left.labels)
        for i, k in links.iter_rows():
            partner_of[i] = k
        j = left.df.with_columns(r_sid=pl.Series(partner_of, dtype=pl.UInt32).gather(left.df["sid"]))
        if how == "inner":
            j = j.filter(pl.col("r_sid").is_not_null())
        found = _lookup(j, r, how) if packable(j, r) else None
        j = found if found is not None else j.join(r.drop("r_value"), on=["k", "r_sid"], how=how)
        partner = pl.col("r_ok") if op == "and" else ~pl.col("r_ok").fill_null(False)
        ok = pl.col("ok") & partner
        return Vec(j.select("k", "sid", "value", ok.alias("ok")), left.labels)
    if op in ("and", "unless"):
        matched = (
            left.df.select("k", "sid")
            .join(links, on="sid", how="inner")
            .join(r, on=["k", "r_sid"], how="inner")
            .group_by("k", "sid")
            .agg(pl.col("r_ok").any().alias("r_any"))
        )
        how = "inner" if op == "and" else "left"
        j = left.df.join(matched, on=["k", "sid"], how=how)
        ok = pl.col("ok") & (pl.col("r_any") if op == "and" else ~pl.col("r_any").fill_null(False))
        return Vec(j.select("k", "sid", "value", ok.alias("ok")), left.labels)
    # or: matched series merge into one output series; unmatched ones pass through.
    if not right.labels or not left.labels:
        alone = _distinct(right if not left.labels else left)
        if alone is not None:
            return alone
    # Why exact for or: "a or b" lists both sides' series; only identical label sets are one alert.
    pairs, merged = pairs_frame(left.labels, right.labels, exact=True)
    out_labels = list(merged)
    lmap = [(int(a), int(o)) for a, o in zip(pairs["l_sid"], pairs["o_sid"], strict=True)]
    rmap = [(int(b), int(o)) for b, o in zip(pairs["r_sid"], pairs["o_sid"], strict=True)]
    paired_l, paired_r = {a for a, _ in lmap}, {b for b, _ in rmap}
    for i, lab in enumerate(left.labels):
        if i not in paired_l:
            lmap.append((i, len(out_labels)))
            out_labels.append(lab)
    for j, lab in enumerate(right.labels):
        if j not in paired_r:
            rmap.append((j, len(out_labels)))
            out_labels.append(lab)
    schema = {"sid": pl.UInt32, "o_sid": pl.UInt32}
    lm = pl.DataFrame(lmap, schema=schema, orient="row")
    rm = pl.DataFrame(rmap, schema=schema, orient="row")
    both = pl.concat(
        [
            left.df.join(lm, on="sid").with_columns(side=pl.lit(0, pl.Int8)),
            right.df.join(rm, on="sid").with_columns(side=pl.lit(1, pl.Int8)),
        ]
    )
    both = both.sort("k", "o_sid", pl.col("ok").not_(), "side")
    if both["ok"].null_count():
        # (a null flag sorts first but is no truth: the pair's flag is any of theirs)
        first = both.unique(["k", "o_sid"], keep="first", maintain_order=True)
        merged_ok = both.group_by("k", "o_sid").agg(pl.col("ok").any())
        first = first.drop("ok").join(merged_ok, on=["k", "o_sid"], maintain_order="left")
    else:
        # Why the first row: sorted true before false, a pair's first row carries any of their flags;
        # its rows are adjacent, so the first of each is where (k, o_sid) changes, no hashing.
        new = (pl.col("k") != pl.col("k").shift(1)) | (pl.col("o_sid") != pl.col("o_sid").shift(1))
        first = both.filter(new.fill_null(True))
    res = first.select("k", pl.col("o_sid").alias("sid"), "value", "ok")
    return Vec(res, out_labels)


def _distinct(vec: Vec) -> Vec | None:
    """``vec or`` a vector of no series: ``vec`` itself where each (sid, k) is one row with a flag, else None.

    Why: the merge sorts both sides' rows to keep one per (tick, series); with nothing on the other side
    (``not isfinite(loss) or not isfinite(validation_loss)`` of a run without validation) that was a sort
    of every row, to give back the same rows. A null flag is left to the merge (its ``any`` makes it false).
    """
    import numpy as np

    df = vec.df
    if df["ok"].null_count() or not packable(df):
        return None
    key = df.select(pack()).to_series().to_numpy()
    if not (np.diff(key) > 0).all():
        return None
    return Vec(df.select("k", "sid", "value", "ok"), vec.labels)
