"""Cohort studies from differentially-private answers: incidence rates and Kaplan-Meier curves.

Each helper writes one SQL query of per-patient relations (the cohort with its index date, the
end of follow-up, the outcome), asks it once (one charge of ε), and computes the study
quantity from the noisy answer by post-processing, which spends nothing more.

The relations are given as SQL that selects one row per patient:

- ``cohort``: ``person_id, index_date`` (e.g. the first type 2 diabetes diagnosis);
- ``end``: ``person_id, end_date``, the end of follow-up (e.g. the end of observation);
- ``event``: ``person_id, event_date``, the outcome's first date (e.g. death).

Patients whose outcome precedes their index date (prevalent cases) and patients without
follow-up after the index are left out, as a cohort study would. Intervals combine the
sampling uncertainty (Poisson for counts of events, Greenwood for survival) with the noise
that privacy adds (its scale is known from each released cell's interval), by the delta
method for rates and by simulation of the noise for survival curves.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pandas as pd

# A discrete Laplace's 95% interval is ± b·ln(20) around the release: b from a cell's interval.
_LN20 = math.log(20.0)
_Z = 1.959963984540054


def _relations(cohort: str, end: str, event: str) -> str:
    return f"WITH c AS ({cohort}), o AS ({end}), e AS ({event})"



_WHERE = "o.end_date >= c.index_date AND (e.event_date IS NULL OR e.event_date >= c.index_date)"


def _joins_where(by: Optional[str], where: Optional[str]) -> Tuple[str, str]:
    """The join to `person` (needed for a group or a condition on it) and the WHERE clause."""
    join = " JOIN person p ON p.person_id = c.person_id" if (by or where) else ""
    cond = _WHERE + (f" AND ({where})" if where else "")
    return join, cond


def km_sql(
    cohort: str, end: str, event: str, *, by: Optional[str] = None, where: Optional[str] = None, bucket_days: int = 365, horizon: int = 10
) -> str:
    """The one query behind :func:`kaplan_meier`: patients by (group,) time bucket and whether
    the outcome ended their follow-up. Each patient is in exactly one cell (sensitivity 1);
    bucket ``horizon`` holds everyone followed beyond the horizon, as censored there."""
    key = f"p.{by} AS grp, " if by else ""
    join, cond = _joins_where(by, where)
    days = bucket_days * horizon
    exit_ = "LEAST(COALESCE(e.event_date, o.end_date), o.end_date)"
    groups = "1, 2, 3" if by else "1, 2"
    return (
        f"{_relations(cohort, end, event)} "
        f"SELECT {key}LEAST(GREATEST(({exit_} - c.index_date) / {bucket_days}, 0), {horizon}) AS t, "
        f"COALESCE(e.event_date <= o.end_date AND e.event_date < c.index_date + INTERVAL '{days} days', false) AS event, "
        f"COUNT(*) AS n "
        f"FROM c{join} JOIN o ON o.person_id = c.person_id LEFT JOIN e ON e.person_id = c.person_id "
        f"WHERE {cond} GROUP BY {groups}"
    )


def incidence_sql(cohort: str, end: str, event: str, *, by: Optional[str] = None, where: Optional[str] = None, max_days: int = 3650) -> str:
    """The one query behind :func:`incidence`: events and person-days of follow-up (each
    patient's at most ``max_days``), per group."""
    key = f"p.{by} AS grp, " if by else ""
    join, cond = _joins_where(by, where)
    exit_ = "LEAST(COALESCE(e.event_date, o.end_date), o.end_date)"
    group = " GROUP BY 1" if by else ""
    return (
        f"{_relations(cohort, end, event)} "
        f"SELECT {key}"
        f"COUNT(CASE WHEN e.event_date <= o.end_date AND e.event_date <= c.index_date + INTERVAL '{max_days} days' THEN 1 END) AS events, "
        f"SUM(LEAST(GREATEST({exit_} - c.index_date, 0), {max_days})) AS person_days "
        f"FROM c{join} JOIN o ON o.person_id = c.person_id LEFT JOIN e ON e.person_id = c.person_id "
        f"WHERE {cond}{group}"
    )


def _scale(value: float, hi: float) -> float:
    """The noise scale b of a released cell, from the upper half of its 95% interval (the lower
    half of a count's is clipped at zero)."""
    if not (math.isfinite(value) and math.isfinite(hi)):
        return 0.0
    return max(hi - value, 0.0) / _LN20


def survival_curve(events: np.ndarray, censored: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Kaplan-Meier from counts per time bucket (the last bucket: censored at the horizon).

    Returns (at risk at the start of each bucket, survival at its end, Greenwood variance of the
    survival). Noisy counts are clipped to be non-negative first; a hazard is capped at 1."""
    d = np.clip(np.asarray(events, dtype=float), 0.0, None)
    c = np.clip(np.asarray(censored, dtype=float), 0.0, None)
    n0 = d.sum() + c.sum()
    left = n0 - np.concatenate([[0.0], np.cumsum(d + c)[:-1]])
    at_risk = np.clip(left, 0.0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        hazard = np.where(at_risk > 0, np.minimum(d / np.where(at_risk > 0, at_risk, 1.0), 1.0), 0.0)
        s = np.cumprod(1.0 - hazard)
        term = np.where((at_risk > 0) & (at_risk > d), d / (at_risk * np.maximum(at_risk - d, 1e-9)), 0.0)
    var = s**2 * np.cumsum(term)
    return at_risk, s, var


def _cells(df: pd.DataFrame, horizon: int, threshold: float) -> Dict[Any, Dict[str, np.ndarray]]:
    """Released counts per group as arrays over buckets 0..horizon, with their noise scales and
    which were suppressed. A suppressed count is known only to be under the threshold: it
    stands at half the threshold, and varies uniformly over [0, threshold) in the simulation."""
    out: Dict[Any, Dict[str, np.ndarray]] = {}
    groups = df["grp"].unique() if "grp" in df.columns else [None]
    for g in groups:
        part = df if g is None else df[df["grp"] == g]
        arr = {k: np.zeros(horizon + 1) for k in ("d", "c", "bd", "bc", "sd", "sc")}
        for _, r in part.iterrows():
            t = int(r["t"])
            if not 0 <= t <= horizon:
                continue
            hidden = pd.isna(r["n"])
            value = threshold / 2.0 if hidden else float(r["n"])
            b = 0.0 if hidden else _scale(r["n"], r["n_ci95_hi"])
            # Everyone in the last bucket was followed past the horizon: censored there.
            kind = "d" if bool(r["event"]) and t < horizon else "c"
            arr[kind][t] += value
            arr["b" + kind][t] = max(arr["b" + kind][t], b)
            arr["s" + kind][t] += hidden
        out[g] = arr
    return out


def kaplan_meier(
    client: Any,
    project: Any,
    *,
    cohort: str,
    end: str,
    event: str,
    epsilon: float,
    by: Optional[str] = None,
    where: Optional[str] = None,
    bucket_days: int = 365,
    horizon: int = 10,
    simulations: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Kaplan-Meier survival (free of the outcome) from the index date, per group of ``by`` (a
    column of ``person``), with pointwise 95% intervals.

    One DP query, charged ``epsilon``: a histogram of (group, time bucket of ``bucket_days``,
    event or censored) for buckets up to ``horizon``; ``where`` is a condition on ``person p``
    (``"p.gender_concept_id IN (8507, 8532)"``: it also narrows the groups). The curve and its intervals are
    post-processing: each released count is clipped at zero; the interval adds Greenwood's
    variance to the variance of the curve under redrawn privacy noise (``simulations`` draws).

    Returns one row per (group,) bucket: ``time_days`` (end of the bucket), ``at_risk``,
    ``events``, ``censored``, ``survival``, ``ci95_lo``, ``ci95_hi``. ``df.attrs`` holds the SQL,
    ε spent and the query's report."""
    sql = km_sql(cohort, end, event, by=by, where=where, bucket_days=bucket_days, horizon=horizon)
    released = client.query(project, sql, epsilon=epsilon)
    suppressed = int(released["n"].isna().sum())
    threshold = float(released.attrs.get("suppression_threshold") or 0)
    if suppressed:
        warnings.warn(
            f"{suppressed} of {len(released)} cells were suppressed as small (under the steward's threshold of {threshold:g}): "
            "they stand at half the threshold, with the intervals widened to cover [0, threshold); "
            "wider time buckets (bucket_days), a shorter horizon or no by= give fewer, larger cells",
            stacklevel=3,
        )
    rng = np.random.default_rng(seed)
    rows: List[Dict[str, Any]] = []
    for g, a in _cells(released, horizon, threshold).items():
        at_risk, s, greenwood = survival_curve(a["d"], a["c"])
        if at_risk[0] < 1:
            continue  # a group nobody is in (its counts are noise around zero)
        # The curve under privacy noise drawn again around the released counts, and
        # suppressed counts anywhere under the threshold.
        draws = np.empty((simulations, horizon + 1))
        for i in range(simulations):
            d = np.where(a["sd"] > 0, rng.uniform(0.0, threshold, horizon + 1) * a["sd"], a["d"] + rng.laplace(0.0, np.maximum(a["bd"], 1e-12)))
            c = np.where(a["sc"] > 0, rng.uniform(0.0, threshold, horizon + 1) * a["sc"], a["c"] + rng.laplace(0.0, np.maximum(a["bc"], 1e-12)))
            draws[i] = survival_curve(d, c)[1]
        sd = np.sqrt(greenwood + draws.var(axis=0))
        for t in range(horizon):
            row: Dict[str, Any] = {}
            if g is not None:
                row[by or "group"] = g
            row.update(
                time_days=(t + 1) * bucket_days,
                at_risk=at_risk[t],
                events=max(a["d"][t], 0.0),
                censored=max(a["c"][t], 0.0),
                survival=s[t],
                ci95_lo=float(np.clip(s[t] - _Z * sd[t], 0.0, 1.0)),
                ci95_hi=float(np.clip(s[t] + _Z * sd[t], 0.0, 1.0)),
            )
            rows.append(row)
    df = pd.DataFrame(rows)
    df.attrs["sql"] = sql
    df.attrs["suppressed_cells"] = suppressed
    df.attrs["epsilon_spent"] = released.attrs.get("epsilon_spent")
    df.attrs["report"] = {k: released.attrs.get(k) for k in ("aggregates", "groups", "query_id")}
    return df


def incidence(
    client: Any,
    project: Any,
    *,
    cohort: str,
    end: str,
    event: str,
    epsilon: float,
    by: Optional[str] = None,
    where: Optional[str] = None,
    max_days: int = 3650,
    per: float = 1000.0,
) -> pd.DataFrame:
    """Incidence rate of the outcome after the index date: events per ``per`` person-years, per
    group of ``by`` (a column of ``person``), each patient followed at most ``max_days``.

    One DP query, charged ``epsilon``, releases the events and the person-days of each group.
    The rate's 95% interval is the delta method on the log scale, with the events' Poisson
    variance plus the privacy noise of both released sums.

    Returns ``events``, ``person_years``, ``rate`` (per ``per`` person-years), ``ci95_lo``,
    ``ci95_hi`` per group; ``df.attrs`` holds the SQL, ε spent and the query's report."""
    sql = incidence_sql(cohort, end, event, by=by, where=where, max_days=max_days)
    released = client.query(project, sql, epsilon=epsilon)
    rows: List[Dict[str, Any]] = []
    if released["events"].isna().any():
        warnings.warn("the number of events of some group was suppressed as small (under the steward's threshold): its rate is missing", stacklevel=3)
    for _, r in released.iterrows():
        if pd.isna(r["events"]):
            rows.append({**({by: r["grp"]} if by is not None else {}), "events": float("nan"), "person_years": float("nan"), "rate": float("nan"), "ci95_lo": float("nan"), "ci95_hi": float("nan")})
            continue
        events = max(float(r["events"]), 0.0)
        days = max(float(r["person_days"]), 1.0) if not pd.isna(r["person_days"]) else 1.0
        b_events = _scale(r["events"], r["events_ci95_hi"])
        b_days = _scale(r["person_days"], r["person_days_ci95_hi"])
        years = days / 365.25
        if years < 1.0:
            # Less than a person-year released: nobody (or noise) is followed in this group.
            rows.append({**({by: r["grp"]} if by is not None else {}), "events": events, "person_years": years, "rate": float("nan"), "ci95_lo": float("nan"), "ci95_hi": float("nan")})
            continue
        rate = events / years * per
        # Var(log rate) ≈ Var(E)/E² + Var(T)/T²; a Laplace of scale b has variance 2b².
        e = max(events, 0.5)
        var_log = (e + 2 * b_events**2) / e**2 + 2 * b_days**2 / days**2
        half = min(_Z * math.sqrt(var_log), 50.0)
        row: Dict[str, Any] = {}
        if by is not None:
            row[by] = r["grp"]
        row.update(
            events=events,
            person_years=years,
            rate=rate,
            ci95_lo=max(e / years * per * math.exp(-half), 0.0) if events > 0 else 0.0,
            ci95_hi=e / years * per * math.exp(half),
        )
        rows.append(row)
    df = pd.DataFrame(rows)
    df.attrs["sql"] = sql
    df.attrs["per_person_years"] = per
    df.attrs["epsilon_spent"] = released.attrs.get("epsilon_spent")
    df.attrs["report"] = {k: released.attrs.get(k) for k in ("aggregates", "groups", "query_id")}
    return df


def plot_survival(km: pd.DataFrame, by: Optional[str] = None, *, ax: Any = None, unit_days: float = 365.25, label: str = "years") -> Any:
    """Step plot of a :func:`kaplan_meier` result with its interval band, one curve per group."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    groups = [(None, km)] if by is None or by not in km.columns else list(km.groupby(by))
    for g, part in groups:
        x = np.concatenate([[0.0], part["time_days"].to_numpy() / unit_days])
        y = np.concatenate([[1.0], part["survival"].to_numpy()])
        lo = np.concatenate([[1.0], part["ci95_lo"].to_numpy()])
        hi = np.concatenate([[1.0], part["ci95_hi"].to_numpy()])
        name = "all" if g is None else f"{by} = {g}"
        (line,) = ax.step(x, y, where="post", label=name)
        ax.fill_between(x, lo, hi, step="post", alpha=0.2, color=line.get_color())
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(f"{label} since the index date")
    ax.set_ylabel("survival (95% interval)")
    ax.legend()
    return ax
