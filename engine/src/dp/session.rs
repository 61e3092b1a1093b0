//! The DataFusion session a query runs in, and the turning of its plans into physical plans.
//!
//! A session sees only the project's tables, read from exactly the files the catalog lists: no
//! information_schema, no URL tables. It has its own memory pool ([`query_memory_limit`]).
//! Plans that will read data are optimized, checked total ([`super::total::check_total`]) and
//! planned physically here, before the debit: what runs after the debit is exactly what was
//! checked.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::catalog::{MemTable, Session as PlanningSession, TableProvider};
use datafusion::common::stats::{Precision, Statistics};
use datafusion::datasource::TableType;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::datasource::physical_plan::{FileScanConfig, FileScanConfigBuilder};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::DataFusionError;
use datafusion::execution::cache::cache_manager::{CacheManager, CacheManagerConfig};
use datafusion::execution::context::{SessionConfig, SessionContext};
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::{Expr, LogicalPlan, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;

use super::rule::Rule;
use super::total;
use crate::error::{Error, Result};
use crate::warehouse::Warehouse;

/// Bytes of memory one query may use: `SECRETUM_QUERY_MEMORY_MB` (default 2048), an operator's
/// setting, the same for every query whatever the data.
pub fn query_memory_limit() -> usize {
    std::env::var("SECRETUM_QUERY_MEMORY_MB").ok().and_then(|v| v.parse::<usize>().ok()).filter(|m| *m > 0).unwrap_or(2048) * 1024 * 1024
}

/// Rows per batch: larger than DataFusion's default (8192), so that a scan of millions of rows
/// pays its per-batch costs (one array per expression, one call per operator) fewer times.
const BATCH_ROWS: usize = 32 * 1024;

fn num_partitions() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
}

/// A query's session, and what the catalog says of the rows of the files it reads.
pub struct Session {
    pub ctx: SessionContext,
    /// Per table, an upper bound on the rows one patient has in the files registered
    /// ([`crate::catalog::unit_rows_bound`]), when known: read from the same file list.
    pub rows_per_patient: BTreeMap<String, u64>,
    /// Per table, its patients that may have the most rows ([`crate::catalog::heavy`]), when
    /// every ingest listed them: read from the same file list.
    pub heavy: BTreeMap<String, Arc<crate::catalog::Heavy>>,
    /// The version of the data the session reads ([`crate::catalog::Catalog::data_version`]).
    pub data_version: String,
}

/// Each table's registration (its provider over exactly the catalog's files, and its bound on
/// rows per patient), kept for the data version they were read at: a query over unchanged data
/// registers them again without reading the catalog's file lists or touching the files.
///
/// Also kept: DataFusion's caches of the files' footers, statistics and listings, shared by
/// every query (each query still gets its own memory pool). The files are immutable (an ingest
/// writes new ones) and each entry is checked against the file's size and modification time.
#[derive(Default)]
pub struct Registrations {
    version: String,
    tables: BTreeMap<String, Registered>,
    files: Option<Arc<CacheManager>>,
}

/// A table's registration: its provider, and what the catalog knows of its patients' rows.
#[derive(Clone)]
struct Registered {
    provider: Arc<dyn TableProvider>,
    rows_per_patient: Option<u64>,
    heavy: Option<Arc<crate::catalog::Heavy>>,
}

/// The session over the project's tables, and the warehouse's public tables (the vocabularies).
pub fn session(wh: &Warehouse, tables: &[String]) -> Result<Session> {
    let mut all: Vec<String> = tables.to_vec();
    for (name, policy) in &wh.schemas.tables {
        if policy.public && !all.contains(name) {
            all.push(name.clone());
        }
    }
    register(wh, &all)
}

/// A session over the public tables only (vocabulary search, public domains).
pub fn public_session(wh: &Warehouse) -> Result<SessionContext> {
    let public: Vec<String> = wh.schemas.tables.iter().filter(|(_, p)| p.public).map(|(n, _)| n.clone()).collect();
    Ok(register(wh, &public)?.ctx)
}

fn register(wh: &Warehouse, tables: &[String]) -> Result<Session> {
    let mut config =
        SessionConfig::new().with_information_schema(false).with_target_partitions(num_partitions()).with_batch_size(BATCH_ROWS);
    // Statistics would be read from every file's footer while planning, before the debit: no
    // file is opened until the query is charged (a dry run opens none).
    config.options_mut().execution.collect_statistics = false;
    let mut cache = wh.registrations();
    let files = match &cache.files {
        Some(f) => f.clone(),
        None => cache.files.insert(CacheManager::try_new(&CacheManagerConfig::default())?).clone(),
    };
    if let Some(cluster) = &wh.cluster {
        config = cluster.configure(config).with_extension(Arc::new(OnCluster(cluster.clone())));
    }
    // One memory pool per query (a session serves one query): spilling operators spill to the
    // system's temporary directory when it is full (see the module documentation of `dp`).
    let mut runtime = RuntimeEnvBuilder::new().with_memory_pool(Arc::new(FairSpillPool::new(query_memory_limit()))).build()?;
    runtime.cache_manager = files;
    wh.store.register(&runtime)?;
    let ctx = SessionContext::new_with_config_rt(config, Arc::new(runtime));
    // One read transaction: the version and every file list come from the same committed state.
    let snapshot = wh.catalog.connection().unchecked_transaction()?;
    let data_version = wh.catalog.data_version()?;
    if cache.version != data_version {
        cache.version = data_version.clone();
        cache.tables.clear();
    }
    let mut rows_per_patient = BTreeMap::new();
    let mut heavy = BTreeMap::new();
    for t in tables {
        let registered = match cache.tables.get(t) {
            Some(r) => r.clone(),
            None => {
                let r = provider(wh, t)?;
                cache.tables.insert(t.clone(), r.clone());
                r
            }
        };
        if let Some(m) = registered.rows_per_patient {
            rows_per_patient.insert(t.clone(), m);
        }
        if let Some(h) = registered.heavy {
            heavy.insert(t.clone(), h);
        }
        ctx.register_table(t.as_str(), registered.provider)?;
    }
    drop(cache);
    snapshot.finish()?;
    Ok(Session { ctx, rows_per_patient, heavy, data_version })
}

/// A table's provider over exactly the files the catalog lists, and what the catalog knows of
/// the rows its patients have there.
fn provider(wh: &Warehouse, t: &str) -> Result<Registered> {
    let policy = wh.schemas.get(t)?;
    let schema = policy.stored_schema();
    let files = wh.catalog.files(t)?;
    let rows_per_patient = crate::catalog::unit_rows_bound(&files);
    let heavy = if policy.public {
        None
    } else {
        let ingests: std::collections::BTreeSet<&str> = files.iter().map(|f| f.ingest_id.as_str()).collect();
        let listed = wh.catalog.listed(ingests)?;
        crate::catalog::heavy(&files, &listed).map(Arc::new)
    };
    let provider: Arc<dyn TableProvider> = if files.is_empty() {
        Arc::new(MemTable::try_new(schema, vec![vec![]])?)
    } else {
        let mut urls = Vec::with_capacity(files.len());
        for f in &files {
            urls.push(wh.store.table_url(&wh.layout.root, &f.path)?);
        }
        Counted::over(urls, schema, files.iter().map(|f| f.rows as usize).sum(), files.iter().map(|f| f.bytes as usize).sum())?
    };
    Ok(Registered { provider, rows_per_patient, heavy })
}

/// A table over the catalog's files whose scan carries the row count the catalog recorded when
/// the files were written, as the plan's statistics.
///
/// The files' own statistics are in their footers, which planning must not read (planning runs
/// before the debit: a dry run opens no file, and a file that cannot be read fails a query only
/// once it is charged). The catalog's counts are exact (an ingest records the rows it wrote to
/// each file, in the same transaction that makes the file visible) and come from the same
/// snapshot as the file list. With them DataFusion answers an unfiltered `COUNT(*)` over a table
/// without reading it, as it would from footers, and sizes its joins from the real row counts.
/// The value enters the plan, never a message: planning cannot fail on it, and it is released
/// only as the exact component of a charged release, like any count computed by a scan.
///
/// On a cluster ([`crate::cluster`]) it travels as its file list and counts ([`Counted::encode`])
/// and the scheduler plans the same scan over the same files.
#[derive(Debug)]
pub struct Counted {
    inner: Arc<dyn TableProvider>,
    urls: Vec<ListingTableUrl>,
    rows: usize,
    bytes: usize,
}

/// What a [`Counted`] table is, on its way to a cluster's scheduler.
#[derive(serde::Serialize, serde::Deserialize)]
struct CountedParts {
    urls: Vec<String>,
    rows: usize,
    bytes: usize,
}

impl Counted {
    /// The table over exactly these files (Parquet, with the table's stored schema).
    pub fn over(
        urls: Vec<ListingTableUrl>,
        schema: arrow::datatypes::SchemaRef,
        rows: usize,
        bytes: usize,
    ) -> Result<Arc<dyn TableProvider>> {
        let options = ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
        let config = ListingTableConfig::new_with_multi_paths(urls.clone()).with_listing_options(options).with_schema(schema);
        Ok(Arc::new(Counted { inner: Arc::new(ListingTable::try_new(config)?), urls, rows, bytes }))
    }

    /// The bytes a cluster node rebuilds this table from (`None` for another provider).
    pub fn encode(provider: &dyn TableProvider) -> Option<Vec<u8>> {
        let any: &dyn std::any::Any = provider;
        let c = any.downcast_ref::<Counted>()?;
        let parts = CountedParts { urls: c.urls.iter().map(|u| u.to_string()).collect(), rows: c.rows, bytes: c.bytes };
        serde_json::to_vec(&parts).ok()
    }

    /// The table [`Counted::encode`] encoded, with the schema the plan gives it.
    pub fn decode(buf: &[u8], schema: arrow::datatypes::SchemaRef) -> datafusion::error::Result<Arc<dyn TableProvider>> {
        let parts: CountedParts = serde_json::from_slice(buf).map_err(|e| DataFusionError::Plan(format!("not a secretum table: {e}")))?;
        let urls = parts.urls.iter().map(ListingTableUrl::parse).collect::<datafusion::error::Result<Vec<_>>>()?;
        Counted::over(urls, schema, parts.rows, parts.bytes).map_err(|e| DataFusionError::External(Box::new(e)))
    }
}

#[async_trait::async_trait]
impl TableProvider for Counted {
    fn schema(&self) -> arrow::datatypes::SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        state: &dyn PlanningSession,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let plan = self.inner.scan(state, projection, filters, limit).await?;
        let Some(config) = plan.downcast_ref::<DataSourceExec>().and_then(|d| d.data_source().downcast_ref::<FileScanConfig>()) else {
            return Ok(plan);
        };
        let mut statistics = Statistics::new_unknown(&self.inner.schema());
        statistics.num_rows = Precision::Exact(self.rows);
        statistics.total_byte_size = Precision::Inexact(self.bytes);
        let config = FileScanConfigBuilder::from(config.clone()).with_statistics(statistics).build();
        Ok(DataSourceExec::from_data_source(config))
    }
}

/// The object store did not answer (listing a table's objects while planning, or reading the
/// vocabulary before the debit): not a refusal (the SQL is fine), and nothing was spent.
fn unavailable(e: &DataFusionError) -> Option<Error> {
    match e.find_root() {
        DataFusionError::ObjectStore(inner) => {
            Some(Error::Unavailable(format!("the warehouse's object store did not answer while planning; nothing was spent: {inner}")))
        }
        _ => None,
    }
}

/// An error of a read of public data (the vocabulary) before the debit: the store's
/// unavailability as such, anything else as the engine's error.
pub fn public_read_error(e: DataFusionError) -> Error {
    unavailable(&e).unwrap_or(Error::DataFusion(e))
}

/// A planning error, as a refusal: planning reads no data, so its message comes from the SQL and
/// the schema (an unknown column, a type mismatch).
pub fn plan_error(e: DataFusionError) -> Error {
    fn root(e: &DataFusionError) -> &DataFusionError {
        match e {
            DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => root(inner),
            DataFusionError::Collection(errs) => errs.first().map_or(e, root),
            other => other,
        }
    }
    if let Some(u) = unavailable(&e) {
        return u;
    }
    let root = root(&e);
    let rule = match root {
        DataFusionError::SchemaError(inner, _) if matches!(inner.as_ref(), datafusion::common::SchemaError::FieldNotFound { .. }) => {
            Rule::UnknownColumn
        }
        _ => Rule::SqlError,
    };
    let msg = e.strip_backtrace();
    Error::refused(rule, msg.lines().next().unwrap_or(""))
}

/// Optimize a plan that will read data, check that every expression in it is total, and plan
/// it physically: all before the debit, from the plan alone.
///
/// On a cluster, the physical plan is the cluster's job over the same optimized, checked plan
/// (see [`crate::cluster`]); it is encoded here once, so that a plan the cluster could not be
/// given fails before the debit.
pub async fn physical(ctx: &SessionContext, plan: LogicalPlan) -> Result<Arc<dyn ExecutionPlan>> {
    let state = ctx.state();
    let optimized = state.optimize(&plan).map_err(plan_error)?;
    total::check_total(&optimized)?;
    let planner = match state.config().get_extension::<OnCluster>() {
        Some(on) => {
            crate::cluster::Cluster::check_encodable(&optimized)?;
            on.0.planner()
        }
        None => state.query_planner().clone(),
    };
    planner.create_physical_plan(&optimized, &state).await.map_err(plan_error)
}

/// The cluster a session's plans run on (a session without it runs them here).
struct OnCluster(crate::cluster::Cluster);

/// The session's cluster, if it has one, read in place (`ctx.state()` would copy the whole
/// session state, function registries included, on every query).
fn on_cluster(ctx: &SessionContext) -> Option<Arc<OnCluster>> {
    ctx.state_ref().read().config().get_extension::<OnCluster>()
}

/// Run a physical plan [`physical`] made and collect its batches: here, or as a job on the
/// cluster, which fails after [`crate::cluster::job_timeout`] if the cluster does not finish it.
pub async fn collect(ctx: &SessionContext, plan: Arc<dyn ExecutionPlan>) -> Result<Vec<arrow::record_batch::RecordBatch>> {
    let run = datafusion::physical_plan::collect(plan, ctx.task_ctx());
    if on_cluster(ctx).is_none() {
        return Ok(run.await?);
    }
    let limit = crate::cluster::job_timeout();
    match tokio::time::timeout(limit, run).await {
        Ok(batches) => Ok(batches?),
        Err(_) => Err(Error::DataFusion(DataFusionError::ResourcesExhausted(format!(
            "the cluster did not finish the job within {} s",
            limit.as_secs()
        )))),
    }
}

/// Where a session's plans run, as the release report says it.
pub fn ran_on(ctx: &SessionContext) -> String {
    match on_cluster(ctx) {
        Some(on) => format!("cluster {}", on.0.url()),
        None => "this node".to_owned(),
    }
}

/// What kind of failure an execution error is, without its text (which could quote a value).
pub fn error_kind(e: &Error) -> &'static str {
    use datafusion::error::DataFusionError as E;
    fn of(e: &E) -> &'static str {
        match e {
            E::ArrowError(..) => "arrow",
            E::ParquetError(_) => "parquet",
            E::ObjectStore(_) => "object store",
            E::IoError(_) => "i/o",
            E::ResourcesExhausted(_) => "resources exhausted",
            E::ExecutionJoin(_) => "task",
            E::Context(_, inner) => of(inner),
            E::Shared(inner) => of(inner),
            E::External(_) => "external",
            E::Execution(_) => "execution",
            _ => "internal",
        }
    }
    match e {
        Error::DataFusion(d) => of(d),
        Error::Arrow(_) => "arrow",
        Error::Parquet(_) => "parquet",
        Error::Io { .. } => "i/o",
        Error::Catalog(_) => "catalog",
        _ => "internal",
    }
}
