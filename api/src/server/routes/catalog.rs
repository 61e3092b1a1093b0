//! What may be asked: the tables, their columns, privacy roles, bounds and public domains
//! (never rows, never counts); and the ingest history (stewards).

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use secretum_engine::governance::accounts::Role;
use secretum_engine::schema::Domain;

use crate::server::auth::Caller;
use crate::server::error::ApiResult;
use crate::server::error::ErrorBody;
use crate::server::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct TableView {
    pub name: String,
    pub description: Option<String>,
    /// Rows one patient may contribute to a query; more are sampled away.
    pub max_rows_per_unit: u32,
    /// Groups one patient may contribute to (a query may tighten it).
    pub max_groups_per_unit: u32,
    pub columns: Vec<ColumnView>,
}

#[derive(Serialize, ToSchema)]
pub struct ColumnView {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
    /// `privacy_unit`, `identifier`, `quasi_identifier` or `attribute`.
    pub privacy_role: String,
    /// Whether values may be released, grouped on, or aggregated.
    pub releasable: bool,
    pub nullable: bool,
    /// Values are clamped to these bounds in every aggregate.
    pub bounds: Option<[f64; 2]>,
    /// The declared public domain: grouping on it releases every key, even empty ones.
    pub domain: Option<DomainView>,
    pub description: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct DomainView {
    /// Number of keys.
    pub size: usize,
    /// `[lo, hi]` for an integer range.
    pub range: Option<[i64; 2]>,
    /// The listed values (for lists).
    #[schema(value_type = Option<Vec<Object>>)]
    pub values: Option<Vec<serde_json::Value>>,
}

/// What researchers may ask about: tables, columns, privacy roles, bounds, domains. Never rows,
/// never row counts.
#[utoipa::path(get, path = "/v1/tables", tag = "catalog", security(("bearer" = [])),
    responses((status = 200, body = Vec<TableView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn tables(State(st): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<TableView>>> {
    caller.require(&[Role::Researcher, Role::Steward], "the catalog")?;
    let views = st
        .schemas()
        .tables
        .values()
        .map(|t| TableView {
            name: t.name.clone(),
            description: t.description.clone(),
            max_rows_per_unit: t.max_rows_per_unit,
            max_groups_per_unit: t.max_groups_per_unit,
            columns: t
                .stored_columns()
                .map(|c| ColumnView {
                    name: c.name.clone(),
                    ty: c.stored_type().name(),
                    privacy_role: c.role.name().into(),
                    releasable: c.is_releasable(),
                    nullable: c.nullable,
                    bounds: c.bounds.map(|(lo, hi)| [lo, hi]),
                    domain: c.domain.as_ref().map(|d| match d {
                        Domain::Range(lo, hi) => DomainView { size: d.len(), range: Some([*lo, *hi]), values: None },
                        Domain::Values(set) => DomainView {
                            size: set.len(),
                            range: None,
                            values: Some(
                                set.iter()
                                    .map(|v| match v {
                                        secretum_engine::schema::DomainValue::Int(i) => (*i).into(),
                                        secretum_engine::schema::DomainValue::Str(s) => s.clone().into(),
                                    })
                                    .collect(),
                            ),
                        },
                    }),
                    description: c.description.clone(),
                })
                .collect(),
        })
        .collect();
    Ok(Json(views))
}

#[derive(Serialize, ToSchema)]
pub struct IngestView {
    pub id: String,
    pub table: String,
    pub source: String,
    pub source_sha256: String,
    pub rows: u64,
    pub bytes: u64,
    pub committed_at: String,
    pub actor: String,
}

/// Ingest history (stewards only: it carries row counts).
#[utoipa::path(get, path = "/v1/ingests", tag = "catalog", security(("bearer" = [])),
    responses((status = 200, body = Vec<IngestView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn ingests(State(st): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<IngestView>>> {
    caller.require(&[Role::Steward], "the ingest history")?;
    st.blocking(|st| {
        let wh = st.warehouse()?;
        Ok(Json(
            wh.catalog
                .ingests()?
                .into_iter()
                .map(|i| IngestView {
                    id: i.id,
                    table: i.table,
                    source: i.source_path,
                    source_sha256: i.source_sha256,
                    rows: i.rows,
                    bytes: i.bytes,
                    committed_at: i.committed_at,
                    actor: i.actor,
                })
                .collect(),
        ))
    })
    .await
}
