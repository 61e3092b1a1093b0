"""The client against a live server (SECRETUM_URL, SECRETUM_TOKEN for a researcher,
SECRETUM_STEWARD_TOKEN for a steward), plus its retry logic against a local stub."""

from __future__ import annotations

import http.server
import json
import math
import os
import threading

import pyarrow as pa
import pytest

import secretum_client as sc

COUNT = "SELECT gender_concept_id, COUNT(*) AS n FROM person GROUP BY 1"


def live():
    if "SECRETUM_URL" not in os.environ:
        pytest.fail("SECRETUM_URL, SECRETUM_TOKEN and SECRETUM_STEWARD_TOKEN must name a running server")
    return os.environ["SECRETUM_URL"]


@pytest.fixture(scope="module")
def researcher() -> sc.Client:
    return sc.Client(live(), os.environ["SECRETUM_TOKEN"])


@pytest.fixture(scope="module")
def steward() -> sc.Client:
    return sc.Client(live(), os.environ["SECRETUM_STEWARD_TOKEN"])


def new_project(researcher: sc.Client, steward: sc.Client, epsilon: float = 2.0) -> dict:
    p = researcher.request_project(
        title="client test", purpose="pytest of the Python client", tables=["person", "condition_occurrence"], epsilon=epsilon, delta=1e-6, duration_days=1
    )
    assert p["status"] == "pending"
    steward.approve(p["id"])
    return researcher.wait_until_active(p["id"], timeout=10)


def test_catalog_has_policy_and_no_rows(researcher: sc.Client) -> None:
    tables = {t["name"]: t for t in researcher.tables()}
    assert "person" in tables
    cols = researcher.columns("person")
    assert set(cols["privacy_role"]) >= {"privacy_unit", "attribute"}
    assert "rows" not in tables["person"]


def test_query_gives_values_and_intervals(researcher: sc.Client, steward: sc.Client) -> None:
    p = new_project(researcher, steward)
    df = researcher.query(p["id"], COUNT, epsilon=0.5)
    assert list(df.columns) == ["gender_concept_id", "n", "n_ci95_lo", "n_ci95_hi"]
    assert list(df["gender_concept_id"]) == [0, 8507, 8532], "every key of the public domain, unknown sex (0) included"
    assert ((df["n_ci95_lo"] <= df["n"]) & (df["n"] <= df["n_ci95_hi"])).all()
    assert df.attrs["epsilon_spent"] == pytest.approx(0.5)
    assert researcher.budget(p["id"])["epsilon_remaining"] == pytest.approx(1.5)
    hist = researcher.history(p["id"])
    assert list(hist["sql"]) == [COUNT]


def test_a_repeated_question_replays_and_its_bundle_verifies(researcher: sc.Client, steward: sc.Client) -> None:
    p = new_project(researcher, steward)
    first = researcher.query_raw(p["id"], COUNT, epsilon=0.5)
    again = researcher.query_raw(p["id"], "  " + COUNT.lower() + "  ", epsilon=0.5)
    assert again["rows"] == first["rows"] and again["replay_of"] == first["query_id"]
    assert again["epsilon_spent"] == 0
    assert researcher.budget(p["id"])["epsilon_spent"] == pytest.approx(0.5)

    key = researcher.signing_key()
    bundle = researcher.release_bundle(p["id"], first["query_id"])
    release = sc.verify_bundle(bundle, key)
    assert release["sql"] == COUNT and release["rows"] == first["rows"]
    # The canonical form is byte-exact for the numbers as written: a change to any of them fails.
    text = bundle.text
    compact = json.dumps(json.loads(text))
    assert sc.verify_bundle(text, key)["query_id"] == first["query_id"]
    for before, after in [('"epsilon": 0.5', '"epsilon": 0.05'), (f'"query_id": {first["query_id"]}', '"query_id": 999')]:
        assert before in compact, before
        with pytest.raises(sc.BundleNotVerified):
            sc.verify_bundle(compact.replace(before, after, 1), key)
    with pytest.raises(sc.BundleNotVerified):
        sc.verify_bundle(bundle, "00" * 32)


def test_dry_run_and_target_ci_spend_nothing(researcher: sc.Client, steward: sc.Client) -> None:
    p = new_project(researcher, steward)
    dry = researcher.query(p["id"], COUNT, epsilon=0.5, dry_run=True)
    assert dry.attrs["dry_run"] is True
    assert dry.attrs["aggregates"][0]["ci95_half_width"] > 0
    eps = researcher.epsilon_for(p["id"], COUNT, half_width=5.0)
    assert 0 < eps < 10
    assert researcher.budget(p["id"])["epsilon_spent"] == 0


def test_arrow_stream(researcher: sc.Client, steward: sc.Client) -> None:
    p = new_project(researcher, steward)
    t = researcher.query_arrow(p["id"], COUNT, epsilon=0.5)
    assert isinstance(t, pa.Table)
    assert t.column_names == ["gender_concept_id", "n", "n_ci95_lo", "n_ci95_hi"]
    assert float(t.schema.metadata[b"epsilon_spent"]) == pytest.approx(0.5)


def test_errors_map_to_exceptions(researcher: sc.Client, steward: sc.Client) -> None:
    p = new_project(researcher, steward, epsilon=0.5)
    with pytest.raises(sc.SqlRefused) as refused:
        researcher.query(p["id"], "SELECT person_id FROM person", epsilon=0.1)
    assert refused.value.rule == "aggregate-required"
    assert refused.value.status == 422
    researcher.query(p["id"], COUNT, epsilon=0.5)
    with pytest.raises(sc.BudgetExhausted):
        researcher.query(p["id"], COUNT, epsilon=0.1)
    with pytest.raises(sc.NotFound):
        researcher.project(999999)
    with pytest.raises(sc.Forbidden):
        researcher.approve(p["id"])
    with pytest.raises(sc.Unauthorized):
        sc.Client(live(), "sct_" + "0" * 64).me()
    with pytest.raises(sc.Malformed):
        researcher.request_project(title="x", purpose="y", tables=["no_such_table"], epsilon=1)


class _Stub(http.server.BaseHTTPRequestHandler):
    """Answers 429 twice (Retry-After: 0), then 200."""

    calls = 0

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        type(self).calls += 1
        if type(self).calls <= 2:
            body, status = {"error": {"code": "rate_limited", "message": "slow down"}}, 429
        else:
            body, status = {"name": "alice", "role": "researcher"}, 200
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 429:
            self.send_header("Retry-After", "0")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def test_429_is_retried_with_backoff_then_raised() -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Stub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        assert sc.Client(url, "t", backoff=0.01).me()["name"] == "alice"
        assert _Stub.calls == 3
        _Stub.calls = -10  # now always 429 for a while
        with pytest.raises(sc.RateLimited):
            sc.Client(url, "t", retries=2, backoff=0.01).me()
    finally:
        server.shutdown()


def test_suppressed_cells_are_nan() -> None:
    from secretum_client.client import answer_frame

    df = answer_frame({"columns": ["k", "n"], "rows": [[1, {"value": 12, "ci95": [5, 19]}], [2, None]], "epsilon_spent": 0.1})
    assert math.isnan(df["n"][1]) and math.isnan(df["n_ci95_hi"][1])
    assert df["n"][0] == 12 and df.attrs["epsilon_spent"] == 0.1


# -- cohort studies ------------------------------------------------------------------------------

T2D = "SELECT person_id, MIN(condition_start_date) AS index_date FROM condition_occurrence WHERE condition_source_value LIKE 'E11%' GROUP BY person_id"
END = "SELECT person_id, MAX(observation_period_end_date) AS end_date FROM observation_period GROUP BY person_id"
DEATH = "SELECT person_id, MIN(death_date) AS event_date FROM death GROUP BY person_id"


def stored(table: str) -> "pd.DataFrame":
    """A table as stored by the warehouse the server runs on (the test's own fixture; a
    researcher never has this), to compute the exact answer the DP one is compared with."""
    import glob

    import pandas as pd
    import pyarrow.parquet as pq

    data = os.environ.get("SECRETUM_TEST_DATA")
    if not data:
        pytest.fail("SECRETUM_TEST_DATA must name the served warehouse's data directory")
    files = sorted(glob.glob(os.path.join(data, "tables", table, "*.parquet")))
    return pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)


def exact_follow_up(bucket_days: int, horizon: int):
    """The cohort's follow-up computed exactly with pandas, as the helpers' SQL defines it."""
    import pandas as pd

    co = stored("condition_occurrence")
    index = co[co["condition_source_value"].str.startswith("E11")].groupby("person_id")["condition_start_date"].min().rename("index_date")
    end = stored("observation_period").groupby("person_id")["observation_period_end_date"].max().rename("end_date")
    death = stored("death").groupby("person_id")["death_date"].min().rename("event_date")
    person = stored("person").set_index("person_id")["gender_concept_id"]
    df = pd.concat([index, end], axis=1, join="inner").join(death, how="left").join(person, how="inner")
    for c in ("index_date", "end_date", "event_date"):
        df[c] = pd.to_datetime(df[c])
    df = df[(df["end_date"] >= df["index_date"]) & (df["event_date"].isna() | (df["event_date"] >= df["index_date"]))]
    exit_ = df["event_date"].fillna(df["end_date"]).where(lambda x: x <= df["end_date"], df["end_date"])
    days = (exit_ - df["index_date"]).dt.days
    df = df.assign(
        days=days,
        t=(days // bucket_days).clip(0, horizon),
        event=df["event_date"].notna()
        & (df["event_date"] <= df["end_date"])
        & (df["event_date"] < df["index_date"] + pd.Timedelta(days=bucket_days * horizon)),
    )
    return df


def test_kaplan_meier_intervals_hold_the_exact_curve(researcher: sc.Client, steward: sc.Client) -> None:
    import numpy as np

    p = researcher.request_project(
        title="survival", purpose="pytest of kaplan_meier", tables=["person", "condition_occurrence", "observation_period", "death"], epsilon=10.0, delta=0.0, duration_days=1
    )
    steward.approve(p["id"])
    researcher.wait_until_active(p["id"], timeout=10)
    bucket, horizon = 365, 8
    km = researcher.kaplan_meier(
        p["id"], cohort=T2D, end=END, event=DEATH, by="gender_concept_id", where="p.gender_concept_id IN (8507, 8532)", bucket_days=bucket, horizon=horizon, epsilon=1.0
    )
    assert list(km.columns) == ["gender_concept_id", "time_days", "at_risk", "events", "censored", "survival", "ci95_lo", "ci95_hi"]
    assert len(km) == 2 * horizon
    assert ((km["ci95_lo"] <= km["survival"]) & (km["survival"] <= km["ci95_hi"])).all()
    assert km.groupby("gender_concept_id")["survival"].apply(lambda s: (np.diff(s.to_numpy()) <= 1e-12).all()).all(), "survival never increases"

    exact = exact_follow_up(bucket, horizon)
    inside, total, shown = 0, 0, []
    for g, part in km.groupby("gender_concept_id"):
        ours = exact[exact["gender_concept_id"] == g]
        d = np.bincount(ours["t"][ours["event"] & (ours["t"] < horizon)], minlength=horizon + 1).astype(float)
        c = np.bincount(ours["t"][~(ours["event"] & (ours["t"] < horizon))], minlength=horizon + 1).astype(float)
        _, s, _ = sc.survival_curve(d, c)
        shown.append(f"{g}: exact events {d.tolist()} censored {c.tolist()} survival {s.round(3).tolist()}; released events {part['events'].round(1).tolist()} censored {part['censored'].round(1).tolist()} survival {part['survival'].round(3).tolist()}")
        assert s[-2] < 1.0, "the synthetic cohort has deaths to estimate"
        for t, row in enumerate(part.itertuples()):
            total += 1
            inside += row.ci95_lo - 1e-9 <= s[t] <= row.ci95_hi + 1e-9
    assert inside >= 0.8 * total, f"the exact curve is inside the DP curve's intervals at {inside} of {total} time points: {shown}"


def test_incidence_interval_holds_the_exact_rate(researcher: sc.Client, steward: sc.Client) -> None:
    p = researcher.request_project(
        title="incidence", purpose="pytest of incidence", tables=["person", "condition_occurrence", "observation_period", "death"], epsilon=10.0, delta=0.0, duration_days=1
    )
    steward.approve(p["id"])
    researcher.wait_until_active(p["id"], timeout=10)
    inc = researcher.incidence(p["id"], cohort=T2D, end=END, event=DEATH, by="gender_concept_id", where="p.gender_concept_id IN (8507, 8532)", max_days=3650, epsilon=1.0)
    assert set(inc.columns) == {"gender_concept_id", "events", "person_years", "rate", "ci95_lo", "ci95_hi"}
    exact = exact_follow_up(3650, 1)
    for row in inc.itertuples():
        ours = exact[exact["gender_concept_id"] == row.gender_concept_id]
        events = float((ours["event"] & (ours["days"] <= 3650)).sum())
        years = float(ours["days"].clip(0, 3650).sum()) / 365.25
        rate = events / years * 1000
        assert row.ci95_lo <= rate <= row.ci95_hi, f"exact {rate:.2f} outside [{row.ci95_lo:.2f}, {row.ci95_hi:.2f}]"
