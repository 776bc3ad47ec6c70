"""Per-cluster explainable features, each a number in [0, 1] (issue 6, "Reseller clusters").

Input: the membership frame from cluster.py (account id `a` -> `cluster`) and the store's tables.
Output: one row per cluster with every feature in FEATURES, computed with polars group-bys over all
clusters at once (no per-cluster Python). Per-account request volume is deliberately absent: public
reports describe farms of 20,000+ accounts with a few hundred requests each, so shared
infrastructure and synchronisation are the signals, not how much one account sends.

Each feature maps a raw measure onto [0, 1] with a saturation point stated next to it; score.py
weighs them. Raw measures are kept alongside (`*_raw`) for the evidence summaries.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta

import polars as pl

from appliance.graph.store import GraphStore

FEATURES: tuple[str, ...] = (
    "accounts_per_egress_ip", "hosting_vpn_share", "payment_reuse", "sequential_bins", "creation_burst",
    "missing_organization", "disposable_email", "synchronized_activity", "no_diurnal_pause",
    "key_rotation", "account_succession", "ja4_ua_mismatch", "relay_link",
)

BURST_WINDOW = timedelta(minutes=10)  # accounts created this close together came from one script
ROTATION_GRACE = timedelta(minutes=5)  # a key rate-limited and dropped within 5 min of its last 429
ROTATION_NEXT = timedelta(minutes=10)  # ... and the next key of the cluster starts within 10 min
SUCCESSION_WINDOW = timedelta(minutes=60)  # an account goes quiet, a new one is created within the hour
BIN_STEP = 9  # distinct BINs at most this far apart: consecutive issuer ranges bought in one lot


def _clip(expr: pl.Expr) -> pl.Expr:
    return expr.fill_nan(0.0).fill_null(0.0).clip(0.0, 1.0)


def _edges(store: GraphStore, etype: str) -> pl.DataFrame:
    return store.tables["edges"].filter(pl.col("etype") == etype)


def compute(store: GraphStore, memb: pl.DataFrame, disposable: Iterable[str], relays: Iterable[str]) -> pl.DataFrame:
    """One row per cluster: `cluster`, `n_accounts`, every FEATURES column and its `_raw` measure."""
    out = memb.group_by("cluster").agg(pl.len().alias("n_accounts"))
    for part in (_egress(store, memb, list(relays)), _payments(store, memb), _accounts(store, memb, disposable),
                 _activity(store, memb), _keys(store, memb), _succession(store, memb)):
        out = out.join(part, on="cluster", how="left")
    for f in FEATURES:
        out = out.with_columns(_clip(pl.col(f)).alias(f))
    return out.sort("cluster")


def _egress(store: GraphStore, memb: pl.DataFrame, relay_ips: list[str]) -> pl.DataFrame:
    eg = _edges(store, "egress").select(pl.col("src").alias("a"), pl.col("dst").alias("ip"), "count")
    eg = eg.join(memb, on="a")
    ips = store.tables["ips"].select(
        pl.col("id").alias("ip"),
        (pl.col("hosting") | pl.col("vpn") | pl.col("proxy") | pl.col("tor")).fill_null(False).alias("anon"))
    relays = store.tables["nodes"].filter((pl.col("type") == "ip") & pl.col("value").is_in(relay_ips))
    eg = eg.join(ips, on="ip", how="left").with_columns(
        pl.col("anon").fill_null(False), pl.col("ip").is_in(relays.get_column("id").implode()).alias("relay"))
    per = eg.group_by("cluster").agg(
        (pl.col("a").n_unique() / pl.col("ip").n_unique()).alias("accounts_per_egress_ip_raw"),
        ((pl.col("count") * pl.col("anon")).sum() / pl.col("count").sum()).alias("hosting_vpn_share"),
        pl.col("relay").any().cast(pl.Float64).alias("relay_link"),
    )
    # One address per account is what independent people look like; 32 accounts per address is
    # already more than any household or small office, so the feature saturates there (log scale).
    return per.with_columns((pl.col("accounts_per_egress_ip_raw").log(2) / 5).alias("accounts_per_egress_ip"))


def _org_of(store: GraphStore, memb: pl.DataFrame) -> pl.DataFrame:
    org = _edges(store, "member_of").select(pl.col("src").alias("a"), pl.col("dst").alias("org"))
    org = org.group_by("a").agg(pl.col("org").min())
    # An account without an organization is its own: keys that never collide with node ids.
    return memb.join(org, on="a", how="left").with_columns(pl.col("org").fill_null(-pl.col("a") - 1))


def _payments(store: GraphStore, memb: pl.DataFrame) -> pl.DataFrame:
    pay = _edges(store, "pays_with").select(pl.col("src").alias("a"), pl.col("dst").alias("pay"))
    m = _org_of(store, memb).join(pay, on="a")
    per_pay = m.group_by("cluster", "pay").agg(pl.col("a").n_unique().alias("k"), pl.col("org").n_unique().alias("o"))
    # One card paying for many accounts of one organization is a corporate card (the enterprise
    # look-alike); reuse across accounts with different or no organizations is the farm pattern.
    reuse = per_pay.group_by("cluster").agg(
        (pl.col("k").filter((pl.col("k") > 1) & (pl.col("o") > 1)).sum() / pl.col("k").sum())
        .alias("payment_reuse_raw"))
    # Saturates at half the accounts on shared cards.
    reuse = reuse.with_columns((pl.col("payment_reuse_raw") * 2).alias("payment_reuse"))
    bins = (_edges(store, "card_bin").select(pl.col("src").alias("pay"), pl.col("dst").alias("bin_id"))
            .join(m.select("cluster", "pay").unique(), on="pay"))
    bins = store.values(bins, "bin_id").with_columns(pl.col("bin_id_value").cast(pl.Int64, strict=False).alias("b"))
    bins = bins.select("cluster", "b").drop_nulls().unique().sort("cluster", "b")
    bins = bins.with_columns(
        (pl.col("b") - pl.col("b").shift(1).over("cluster")).alias("gp"),
        (pl.col("b").shift(-1).over("cluster") - pl.col("b")).alias("gn"))
    bins = bins.with_columns(((pl.col("gp") <= BIN_STEP) | (pl.col("gn") <= BIN_STEP)).fill_null(False).alias("seq"))
    seq = bins.group_by("cluster").agg(pl.len().alias("nb"), pl.col("seq").mean().alias("sequential_bins_raw"))
    # Two BINs side by side happen by chance; a run needs at least three distinct ones.
    seq = seq.with_columns(pl.when(pl.col("nb") >= 3).then(pl.col("sequential_bins_raw")).otherwise(0.0)
                           .alias("sequential_bins")).drop("nb")
    return reuse.join(seq, on="cluster", how="full", coalesce=True)


def _accounts(store: GraphStore, memb: pl.DataFrame, disposable: Iterable[str]) -> pl.DataFrame:
    acc = store.tables["accounts"].select(pl.col("id").alias("a"), "created", "email_domain")
    m = _org_of(store, memb).join(acc, on="a", how="left")
    m = m.with_columns((pl.col("org").count().over("cluster", "org") <= 1).alias("lone"),
                       pl.col("email_domain").str.to_lowercase().is_in(list(disposable)).alias("disp"))
    s = m.filter(pl.col("created").is_not_null()).sort("cluster", "created").with_columns(
        (pl.col("created") - pl.col("created").shift(1).over("cluster")).alias("gp"),
        (pl.col("created").shift(-1).over("cluster") - pl.col("created")).alias("gn"))
    burst = s.group_by("cluster").agg(
        ((pl.col("gp") <= BURST_WINDOW) | (pl.col("gn") <= BURST_WINDOW)).fill_null(False).mean()
        .alias("creation_burst_raw"))
    # Saturates when half the accounts were created within minutes of another.
    burst = burst.with_columns((pl.col("creation_burst_raw") * 2).alias("creation_burst"))
    per = m.group_by("cluster").agg(pl.col("lone").mean().alias("missing_organization"),
                                    pl.col("disp").fill_null(False).mean().alias("disposable_email"))
    return per.join(burst, on="cluster", how="left")


def _activity(store: GraphStore, memb: pl.DataFrame) -> pl.DataFrame:
    act = store.tables["activity"].rename({"account": "a"}).join(memb, on="a")
    if act.height == 0:
        return pl.DataFrame(schema={"cluster": memb.schema["cluster"], "synchronized_activity": pl.Float64,
                                    "no_diurnal_pause": pl.Float64, "ja4_ua_mismatch": pl.Float64})
    act = act.with_columns((pl.col("minute") // 60).alias("hour"))
    per_acc = act.group_by("cluster", "a").agg(pl.len().alias("ai"))
    hours = act.group_by("cluster").agg(
        (pl.col("hour").n_unique() * 60).alias("T"), pl.col("minute").n_unique().alias("U"),
        (pl.col("nmis").sum() / pl.col("n").sum()).alias("ja4_ua_mismatch"))
    # Synchronisation, chance-corrected: within the hours the cluster was active at all (so a shared
    # day/night rhythm does not count), independent accounts would cover U_exp = T(1 - prod(1 - a_i/T))
    # distinct minutes; perfectly synchronised ones cover only max a_i. Position of the observed U
    # between the two.
    sync = per_acc.join(hours.select("cluster", "T"), on="cluster").group_by("cluster").agg(
        ((1 - pl.col("ai") / pl.col("T")).log().sum()).alias("lp"), pl.col("ai").max().alias("amax"),
        pl.len().alias("na"), pl.col("T").first())
    sync = sync.join(hours.select("cluster", "U"), on="cluster").with_columns(
        (pl.col("T") * (1 - pl.col("lp").exp())).alias("uexp"))
    sync = sync.with_columns(pl.when((pl.col("na") >= 2) & (pl.col("uexp") > pl.col("amax")))
                             .then((pl.col("uexp") - pl.col("U")) / (pl.col("uexp") - pl.col("amax")))
                             .otherwise(0.0).alias("synchronized_activity"))
    # Diurnal pause: people sleep, a reseller's customers in other time zones do not. Longest circular
    # run of hours of the day with under a quarter of the mean hourly volume; 6 quiet hours is a night.
    hod = act.with_columns((pl.col("hour") % 24).alias("h")).group_by("cluster", "h").agg(pl.col("n").sum())
    grid = memb.select("cluster").unique().join(pl.DataFrame({"h": list(range(24))}, schema={"h": pl.Int32}),
                                                how="cross")
    hod = grid.join(hod.with_columns(pl.col("h").cast(pl.Int32)), on=["cluster", "h"], how="left").with_columns(
        pl.col("n").fill_null(0)).sort("cluster", "h")
    hod = hod.with_columns(pl.col("n").sum().over("cluster").alias("tot"))
    hod = hod.with_columns((pl.col("n") < pl.col("tot") / 24 * 0.25).alias("q"))
    diurnal = hod.group_by("cluster").agg(pl.col("q"), pl.col("tot").first())
    diurnal = diurnal.with_columns(
        pl.col("q").map_elements(_longest_circular_run, return_dtype=pl.Int64).alias("quiet"))
    span = act.group_by("cluster").agg(((pl.col("minute").max() - pl.col("minute").min()) / 60).alias("span_h"))
    diurnal = diurnal.join(span, on="cluster").with_columns(
        pl.when((pl.col("tot") >= 48) & (pl.col("span_h") >= 36)).then(1 - pl.col("quiet") / 6).otherwise(0.0)
        .alias("no_diurnal_pause"), pl.col("quiet").alias("quiet_hours_raw"))
    return (hours.select("cluster", "ja4_ua_mismatch")
            .join(sync.select("cluster", "synchronized_activity"), on="cluster", how="left")
            .join(diurnal.select("cluster", "no_diurnal_pause", "quiet_hours_raw"), on="cluster", how="left"))


def _longest_circular_run(flags: pl.Series) -> int:
    # 24 booleans per cluster: a few thousand clusters at most, negligible next to the group-bys.
    q = flags.to_list()
    if all(q):
        return 24
    best = run = 0
    for v in q + q:
        run = run + 1 if v else 0
        best = max(best, run)
    return min(best, 24)


def _keys(store: GraphStore, memb: pl.DataFrame) -> pl.DataFrame:
    keys = store.tables["keys"].rename({"account": "a"}).join(memb, on="a")
    nk = keys.group_by("cluster").agg(pl.col("key").n_unique().alias("nk"))
    limited = keys.filter(pl.col("last429").is_not_null() & (pl.col("last") <= pl.col("last429") + ROTATION_GRACE))
    starts = keys.select("cluster", pl.col("first").alias("next_first"), pl.col("key").alias("next_key")).sort("next_first")
    probe = limited.select("cluster", "key", (pl.col("last429") - timedelta(minutes=1)).cast(pl.Datetime("ns", "UTC")).alias("t")).sort("t")
    hit = probe.join_asof(starts, left_on="t", right_on="next_first", by="cluster", strategy="forward",
                          tolerance=ROTATION_NEXT + timedelta(minutes=1), check_sortedness=False)
    hit = hit.filter(pl.col("next_key").is_not_null() & (pl.col("next_key") != pl.col("key")))
    rot = hit.group_by("cluster").agg(pl.col("key").n_unique().alias("rot")).join(nk, on="cluster")
    # Saturates when half the cluster's keys were handed over at a rate limit.
    return rot.select("cluster", (pl.col("rot") / (pl.col("nk") - 1).clip(lower_bound=1)).alias("key_rotation_raw"),
                      (2 * pl.col("rot") / (pl.col("nk") - 1).clip(lower_bound=1)).alias("key_rotation"))


def _succession(store: GraphStore, memb: pl.DataFrame) -> pl.DataFrame:
    act = store.tables["activity"].rename({"account": "a"}).join(memb, on="a")
    last = act.group_by("cluster", "a").agg((pl.col("minute").max().cast(pl.Int64) * 60_000_000_000)
                                             .cast(pl.Datetime("ns", "UTC")).alias("last"))
    acc = store.tables["accounts"].select(pl.col("id").alias("a"), "created").join(memb, on="a")
    born = acc.filter(pl.col("created").is_not_null()).sort("created")
    gone = last.select("cluster", pl.col("a").alias("prev"), "last").sort("last")
    hit = born.join_asof(gone, left_on="created", right_on="last", by="cluster", strategy="backward",
                         tolerance=SUCCESSION_WINDOW, check_sortedness=False)
    hit = hit.filter(pl.col("prev").is_not_null() & (pl.col("prev") != pl.col("a")))
    n = memb.group_by("cluster").agg(pl.len().alias("na"))
    suc = hit.group_by("cluster").agg(pl.len().alias("s")).join(n, on="cluster")
    # Saturates when a quarter of the accounts each replaced one that had just gone quiet or been banned.
    return suc.select("cluster", (pl.col("s") / (pl.col("na") - 1).clip(lower_bound=1)).alias("account_succession_raw"),
                      (4 * pl.col("s") / (pl.col("na") - 1).clip(lower_bound=1)).alias("account_succession"))
