"""The HTTP client."""

from __future__ import annotations

import io
import time
from typing import Any, Dict, List, Optional, Sequence, Union

import pandas as pd
import pyarrow as pa
import pyarrow.ipc
import requests

from .errors import RateLimited, SecretumError, error_for

ProjectRef = Union[int, str]
ARROW_STREAM = "application/vnd.apache.arrow.stream"


class Client:
    """A connection to a secretum server with one bearer token.

    ``retries`` bounds how often a 429 (rate limited) is retried, waiting as the server's
    ``Retry-After`` says, or with exponential backoff from ``backoff`` seconds.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = 600.0,
        retries: int = 5,
        backoff: float = 0.5,
        verify: Union[bool, str] = True,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._session = requests.Session()
        self._session.headers["Authorization"] = f"Bearer {token}"
        self._session.verify = verify

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # -- transport ----------------------------------------------------------------------------

    def _request(self, method: str, path: str, *, json: Any = None, params: Any = None, accept: Optional[str] = None) -> requests.Response:
        headers = {"Accept": accept} if accept else {}
        attempt = 0
        while True:
            resp = self._session.request(
                method, self.url + path, json=json, params=params, headers=headers, timeout=self.timeout
            )
            if resp.status_code == 429 and attempt < self.retries:
                wait = self.backoff * (2**attempt)
                retry_after = resp.headers.get("Retry-After")
                if retry_after is not None:
                    try:
                        wait = max(wait, float(retry_after))
                    except ValueError:
                        pass
                time.sleep(wait)
                attempt += 1
                continue
            if resp.status_code >= 400:
                try:
                    body: Any = resp.json()
                except ValueError:
                    body = resp.text
                raise error_for(resp.status_code, body)
            return resp

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        return self._request(method, path, **kw).json()

    @staticmethod
    def _ref(project: Union[ProjectRef, Dict[str, Any]]) -> str:
        if isinstance(project, dict):
            project = project["id"]
        return requests.utils.quote(str(project), safe="")

    # -- service and catalog --------------------------------------------------------------------

    def health(self) -> Dict[str, Any]:
        return self._json("GET", "/health")

    def me(self) -> Dict[str, Any]:
        """Who this token belongs to: ``{"name", "role"}``."""
        return self._json("GET", "/v1/me")

    def tables(self) -> List[Dict[str, Any]]:
        """The catalog: tables, columns, privacy roles, bounds, public domains. Never rows."""
        return self._json("GET", "/v1/tables")

    def columns(self, table: Optional[str] = None) -> pd.DataFrame:
        """The catalog as one DataFrame, a row per column (of ``table``, or of every table)."""
        rows = []
        for t in self.tables():
            if table is not None and t["name"] != table:
                continue
            for c in t["columns"]:
                domain = c.get("domain")
                rows.append(
                    {
                        "table": t["name"],
                        "column": c["name"],
                        "type": c["type"],
                        "privacy_role": c["privacy_role"],
                        "releasable": c["releasable"],
                        "bounds": tuple(c["bounds"]) if c.get("bounds") else None,
                        "domain_size": domain["size"] if domain else None,
                        "max_rows_per_unit": t["max_rows_per_unit"],
                    }
                )
        return pd.DataFrame(rows)

    # -- projects --------------------------------------------------------------------------------

    def request_project(
        self,
        *,
        title: str,
        purpose: str,
        tables: Sequence[str],
        epsilon: float,
        delta: float = 0.0,
        duration_days: int = 90,
        members: Sequence[str] = (),
    ) -> Dict[str, Any]:
        """Ask a steward for a project; it is ``pending`` until approved."""
        body = {
            "title": title,
            "purpose": purpose,
            "tables": list(tables),
            "epsilon": epsilon,
            "delta": delta,
            "duration_days": duration_days,
            "members": list(members),
        }
        return self._json("POST", "/v1/projects", json=body)

    def projects(self, status: Optional[str] = None) -> List[Dict[str, Any]]:
        """Your projects (all of them for a steward)."""
        return self._json("GET", "/v1/projects", params={"status": status} if status else None)

    def project(self, project: ProjectRef) -> Dict[str, Any]:
        return self._json("GET", f"/v1/projects/{self._ref(project)}")

    def budget(self, project: ProjectRef) -> Dict[str, float]:
        """Granted, spent and remaining ε and δ."""
        p = self.project(project)
        return {
            "epsilon": p["epsilon"],
            "epsilon_spent": p["epsilon_spent"],
            "epsilon_remaining": max(p["epsilon"] - p["epsilon_spent"], 0.0),
            "delta": p["delta"],
            "delta_spent": p["delta_spent"],
            "delta_remaining": max(p["delta"] - p["delta_spent"], 0.0),
        }

    def wait_until_active(self, project: ProjectRef, timeout: float = 300.0, poll: float = 0.5) -> Dict[str, Any]:
        """Wait for a steward's decision; raises if the request is rejected or the wait times out."""
        deadline = time.monotonic() + timeout
        while True:
            p = self.project(project)
            if p["status"] == "active":
                return p
            if p["status"] != "pending":
                raise SecretumError(409, "project_not_active", f"project {p['name']} is {p['status']}: {p.get('reason') or ''}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"project {p['name']} still pending after {timeout:.0f} s")
            time.sleep(poll)

    def approve(self, project: ProjectRef, **grant: Any) -> Dict[str, Any]:
        """Steward tokens only: approve a pending request (``epsilon``, ``delta``, ``tables``,
        ``expires_at``; anything left out is granted as requested)."""
        return self._json("POST", f"/v1/projects/{self._ref(project)}/approve", json=grant)

    def reject(self, project: ProjectRef, reason: str) -> Dict[str, Any]:
        """Steward tokens only: reject a pending request."""
        return self._json("POST", f"/v1/projects/{self._ref(project)}/reject", json={"reason": reason})

    def history(self, project: ProjectRef) -> pd.DataFrame:
        """The project's charged queries, oldest first (id, ε, δ, status, time, SQL)."""
        df = pd.DataFrame(self._json("GET", f"/v1/projects/{self._ref(project)}/queries"))
        if not df.empty:
            df["created_at"] = pd.to_datetime(df["created_at"])
        return df

    # -- queries ---------------------------------------------------------------------------------

    def _query_body(self, sql: str, epsilon: Optional[float], delta: Optional[float], dry_run: bool, target_ci: Optional[float], max_groups: Optional[int]) -> Dict[str, Any]:
        body: Dict[str, Any] = {"sql": sql, "dry_run": dry_run}
        for key, value in (("epsilon", epsilon), ("delta", delta), ("target_ci", target_ci), ("max_groups", max_groups)):
            if value is not None:
                body[key] = value
        return body

    def query_raw(
        self,
        project: ProjectRef,
        sql: str,
        epsilon: Optional[float] = None,
        *,
        delta: Optional[float] = None,
        dry_run: bool = False,
        target_ci: Optional[float] = None,
        max_groups: Optional[int] = None,
    ) -> Dict[str, Any]:
        """The server's JSON answer as is (columns, rows, ε/δ spent, budget left, mechanisms)."""
        body = self._query_body(sql, epsilon, delta, dry_run, target_ci, max_groups)
        return self._json("POST", f"/v1/projects/{self._ref(project)}/queries", json=body)

    def query(
        self,
        project: ProjectRef,
        sql: str,
        epsilon: Optional[float] = None,
        *,
        delta: Optional[float] = None,
        dry_run: bool = False,
        max_groups: Optional[int] = None,
    ) -> pd.DataFrame:
        """Run a query; a DataFrame with, for each noisy column ``c``, ``c``, ``c_ci95_lo`` and
        ``c_ci95_hi`` (NaN where a cell is suppressed). ``df.attrs`` holds ε and δ spent, the
        budget left, the query id and how each aggregate was released. A dry run gives the
        same shape with the expected interval half-widths in ``df.attrs["aggregates"]``."""
        answer = self.query_raw(project, sql, epsilon, delta=delta, dry_run=dry_run, max_groups=max_groups)
        return answer_frame(answer)

    def epsilon_for(self, project: ProjectRef, sql: str, half_width: float) -> float:
        """The ε that gives a 95% interval of ± ``half_width`` on the query's counts and sums."""
        answer = self.query_raw(project, sql, target_ci=half_width)
        return float(answer["epsilon_needed"])

    def query_arrow(
        self, project: ProjectRef, sql: str, epsilon: float, *, delta: Optional[float] = None, max_groups: Optional[int] = None
    ) -> pa.Table:
        """Run a query through the Arrow IPC stream; the schema's metadata carries ε/δ spent,
        the budget left and the query id."""
        body = self._query_body(sql, epsilon, delta, False, None, max_groups)
        resp = self._request("POST", f"/v1/projects/{self._ref(project)}/queries", json=body, accept=ARROW_STREAM)
        return pa.ipc.open_stream(io.BytesIO(resp.content)).read_all()


    # -- signed releases -------------------------------------------------------------------------

    def signing_key(self) -> str:
        """The warehouse's public Ed25519 key (hex), which bundles are checked with."""
        return self._json("GET", "/v1/signing-key")["public_key"]

    def release_bundle(self, project: ProjectRef, query_id: int) -> "ReleaseBundle":
        """The signed bundle of an answered query: SQL, plan and bounds, mechanisms, ε/δ, the
        released table, data version, time and audit entry, as a dict that keeps its exact text
        (``.text``: write that to a file to cite it). Check it with :func:`verify_bundle`."""
        from .bundle import ReleaseBundle

        resp = self._request("GET", f"/v1/projects/{self._ref(project)}/queries/{int(query_id)}/bundle")
        return ReleaseBundle(resp.text)

    # -- cohort studies --------------------------------------------------------------------------

    def kaplan_meier(self, project: ProjectRef, **kw: Any) -> pd.DataFrame:
        """Kaplan-Meier survival from an index date, per group, from one DP histogram query
        (see :func:`secretum_client.cohort.kaplan_meier` for the arguments)."""
        from . import cohort

        return cohort.kaplan_meier(self, project, **kw)

    def incidence(self, project: ProjectRef, **kw: Any) -> pd.DataFrame:
        """Incidence rate (events per person-time after an index date), per group, from one DP
        query (see :func:`secretum_client.cohort.incidence` for the arguments)."""
        from . import cohort

        return cohort.incidence(self, project, **kw)


def answer_frame(answer: Dict[str, Any]) -> pd.DataFrame:
    """Turn a JSON answer into a DataFrame with value and interval columns."""
    columns: List[str] = answer["columns"]
    rows: List[List[Any]] = answer["rows"]
    data: Dict[str, List[Any]] = {}
    for i, name in enumerate(columns):
        cells = [r[i] for r in rows]
        if any(isinstance(c, dict) for c in cells):
            data[name] = [float(c["value"]) if isinstance(c, dict) and c.get("value") is not None else float("nan") for c in cells]
            data[f"{name}_ci95_lo"] = [_ci(c, 0) for c in cells]
            data[f"{name}_ci95_hi"] = [_ci(c, 1) for c in cells]
        else:
            data[name] = cells
    df = pd.DataFrame(data)
    for key in ("epsilon_spent", "delta_spent", "budget_remaining", "query_id", "dry_run", "aggregates", "groups", "derived_bounds", "suppression_threshold"):
        df.attrs[key] = answer.get(key)
    return df


def _ci(cell: Any, k: int) -> float:
    if isinstance(cell, dict) and isinstance(cell.get("ci95"), list) and cell["ci95"][k] is not None:
        return float(cell["ci95"][k])
    return float("nan")
