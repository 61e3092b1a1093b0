//! What may be asked: the tables, their columns, privacy roles, bounds and public domains
//! (never rows of patient tables, never counts); the concepts of the public vocabulary, row by
//! row; and the ingest history (stewards).

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use secretum_engine::governance::accounts::Role;
use secretum_engine::schema::Domain;

use crate::server::auth::Caller;
use crate::server::error::ApiResult;
use crate::server::error::{ApiError, ErrorBody, Params};
use crate::server::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct TableView {
    pub name: String,
    pub description: Option<String>,
    /// Rows one patient may contribute to a query; more are sampled away.
    pub max_rows_per_unit: u32,
    /// Groups one patient may contribute to (a query may tighten it).
    pub max_groups_per_unit: u32,
    /// Public reference data (the vocabularies): no patient, readable row by row
    /// (`GET /v1/concepts`), joinable at no privacy cost.
    pub public: bool,
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
    /// The listed values (for lists of at most 1,000).
    #[schema(value_type = Option<Vec<Object>>)]
    pub values: Option<Vec<serde_json::Value>>,
    /// For concept ids: the OMOP domain whose concepts (in the loaded vocabulary) are the keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concepts: Option<String>,
}

/// What researchers may ask about: tables, columns, privacy roles, bounds, domains. Never rows,
/// never row counts.
#[utoipa::path(get, path = "/v1/tables", tag = "catalog", security(("bearer" = [])),
    responses((status = 200, body = Vec<TableView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn tables(State(st): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<TableView>>> {
    caller.require(&[Role::Researcher, Role::Steward], "the catalog")?;
    // Concept domains as the loaded vocabulary resolves them (public data).
    let handle = tokio::runtime::Handle::current();
    let resolved = st.blocking(move |st| Ok(handle.block_on(secretum_engine::vocabulary::resolve_domains(&*st.warehouse()?))?)).await?;
    let concept_domain = |table: &str, column: &str| -> Option<String> {
        st.schemas().tables.get(table)?.column(column).and_then(|c| match &c.domain {
            Some(Domain::Concepts(d)) => Some(d.clone()),
            _ => None,
        })
    };
    let views = resolved
        .tables
        .values()
        .map(|t| TableView {
            name: t.name.clone(),
            description: t.description.clone(),
            max_rows_per_unit: t.max_rows_per_unit,
            max_groups_per_unit: t.max_groups_per_unit,
            public: t.public,
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
                        Domain::Range(lo, hi) => DomainView { size: d.len(), range: Some([*lo, *hi]), values: None, concepts: None },
                        Domain::Values(set) => DomainView {
                            size: set.len(),
                            range: None,
                            values: (set.len() <= 1000).then(|| {
                                set.iter()
                                    .map(|v| match v {
                                        secretum_engine::schema::DomainValue::Int(i) => (*i).into(),
                                        secretum_engine::schema::DomainValue::Str(s) => s.clone().into(),
                                    })
                                    .collect()
                            }),
                            concepts: concept_domain(&t.name, &c.name),
                        },
                        // More concepts than a public domain may have (or no vocabulary loaded).
                        Domain::Concepts(name) => DomainView { size: 0, range: None, values: None, concepts: Some(name.clone()) },
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

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConceptQuery {
    /// Words of the concept's name (any case), or its code, or its id.
    pub q: String,
    /// At most this many concepts, 1 to 1000 (default 50).
    pub limit: Option<usize>,
}

/// Concepts of the loaded vocabulary: public reference data, read row by row at no privacy cost
/// (standard concepts first).
#[utoipa::path(get, path = "/v1/concepts", tag = "catalog", security(("bearer" = [])), params(ConceptQuery),
    responses((status = 200, body = Vec<secretum_engine::vocabulary::Concept>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn concepts(
    State(st): State<AppState>,
    caller: Caller,
    Params(q): Params<ConceptQuery>,
) -> ApiResult<Json<Vec<secretum_engine::vocabulary::Concept>>> {
    caller.require(&[Role::Researcher, Role::Steward], "the vocabulary")?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::malformed(format!("limit must be 1 to 1000, got {limit}")));
    }
    let handle = tokio::runtime::Handle::current();
    let found = st.blocking(move |st| Ok(handle.block_on(secretum_engine::vocabulary::search(&*st.warehouse()?, &q.q, limit))?)).await?;
    Ok(Json(found))
}

/// The public key release bundles are signed with.
#[derive(Serialize, ToSchema)]
pub struct SigningKeyView {
    pub algorithm: &'static str,
    /// 32 bytes, hex.
    pub public_key: String,
}

/// The warehouse's public signing key (no token needed: it is what anyone checks bundles with).
#[utoipa::path(get, path = "/v1/signing-key", tag = "catalog",
    responses((status = 200, body = SigningKeyView)))]
pub async fn signing_key(State(st): State<AppState>) -> ApiResult<Json<SigningKeyView>> {
    st.blocking(move |st| {
        let signer = secretum_engine::signing::Signer::open_or_create(&st.config().data_dir)?;
        Ok(Json(SigningKeyView { algorithm: "Ed25519", public_key: signer.public_hex() }))
    })
    .await
}
