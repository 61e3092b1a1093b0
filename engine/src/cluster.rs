//! Execution on an Apache DataFusion Ballista cluster: the scheduler and executors, embedded in
//! our binary, and the API node's side of a query sent to them.
//!
//! What runs where. The API node does everything that decides what a query may release:
//! analysis, the bounded plans (made total and checked, [`crate::dp::session::physical`]), the
//! ledger debit, noise, post-processing and audit. Only the bounded plan's execution runs on
//! the cluster: the API node sends the optimized logical plan (the same plan a local run
//! would execute) to the scheduler, the executors run its stages reading the Parquet files
//! the catalog named, and the exact per-group aggregates (a small vector) come back. Nothing
//! the cluster returns is released without the API node's noise.
//!
//! Why every node computes what the API node checked. Our plans use our own total kernels
//! (clamps, fixed-point sums, total arithmetic and casts, see [`crate::dp::total`]), which are
//! known by their parameters, not by their names, and our own table ([`Counted`]: exactly the
//! catalog's files, with the catalog's row counts). The codecs here carry both: a kernel
//! travels with its parameters and is rebuilt from them on each node ([`total::encode_kernel`]),
//! a table travels as its file list. A plan that cannot be encoded fails while planning, before
//! the debit ([`Cluster::check_encodable`]).
//!
//! Who can give work to whom. Executors run in pull mode: they ask the scheduler they were
//! started with for tasks and accept none from anywhere else (no executor listens for work).
//! A scheduler given a cluster key ([`ClusterKey`]) accepts jobs (and answers about them) only
//! from callers that present it, as API nodes do; without a key it accepts them from whoever
//! reaches its port. What the key does not cover (an executor's registration, the executors'
//! data ports that serve intermediate results) is protected by the network: every cluster port
//! binds only to the addresses the operator gives, a private network that researchers cannot
//! reach (`docs/cluster.md`); researchers only ever reach the API.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ballista_core::config::{BallistaConfig, TaskSchedulingPolicy};
use ballista_core::planner::BallistaQueryPlanner;
use ballista_core::serde::{BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::common::TableReference;
use datafusion::datasource::file_format::FileFormatFactory;
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::execution::context::{QueryPlanner, SessionConfig, SessionState};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::{Extension, LogicalPlan, ScalarUDF};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::logical_plan::{AsLogicalPlan, LogicalExtensionCodec};
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use datafusion_proto::protobuf::LogicalPlanNode;

use crate::dp::session::Counted;
use crate::dp::total;
use crate::error::{Error, Result};
use crate::store::Store;

/// How long the API node waits for the scheduler to answer a connection before it says the
/// cluster is unavailable (and spends nothing).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Prefixes of what our codecs write, so that they never mistake Ballista's own bytes for ours.
const KERNEL_TAG: &[u8] = b"secretum-kernel:";
const TABLE_TAG: &[u8] = b"secretum-table:";

/// The cluster an API node sends its bounded plans to (`serve --cluster df://host:port`).
#[derive(Clone)]
pub struct Cluster {
    /// `df://host:port`, as reports name it.
    url: String,
    /// `http://host:port`, where the scheduler's gRPC service answers.
    scheduler: String,
    key: Option<ClusterKey>,
    planner: Arc<BallistaQueryPlanner<LogicalPlanNode>>,
}

/// The shared secret between API nodes and the scheduler: a file of mode 0600 holding at least
/// 32 characters, the same on each (`--cluster-key-file`, `SECRETUM_CLUSTER_KEY_FILE`).
#[derive(Clone)]
pub struct ClusterKey(String);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

/// The request header that carries the cluster key.
const KEY_HEADER: &str = "x-secretum-cluster-key";

/// The scheduler's methods its executors call (they cannot present a key: Ballista's executor
/// calls the scheduler without added metadata). Every other method needs the key.
const EXECUTOR_METHODS: [&str; 5] = ["PollWork", "RegisterExecutor", "HeartBeatFromExecutor", "UpdateTaskStatus", "ExecutorStopped"];

impl ClusterKey {
    pub fn load(path: &std::path::Path) -> Result<ClusterKey> {
        let text = crate::store::read_private_file(path, "the cluster key file")?;
        let key = text.trim();
        if key.len() < 32 || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::BadRequest(format!(
                "{}: a cluster key is one line of at least 32 printable characters (e.g. `openssl rand -hex 32`)",
                path.display()
            )));
        }
        Ok(ClusterKey(key.to_owned()))
    }

    /// Whether a request to the scheduler at `path` (`/ballista.protobuf.SchedulerGrpc/<Method>`)
    /// presenting `presented` may go on: an executor's method, or the right key. Compared in
    /// constant time.
    fn admits(&self, path: &str, presented: Option<&[u8]>) -> bool {
        let method = path.rsplit('/').next().unwrap_or("");
        if path.starts_with("/ballista.protobuf.SchedulerGrpc/") && EXECUTOR_METHODS.contains(&method) {
            return true;
        }
        let Some(p) = presented else { return false };
        let expected = self.0.as_bytes();
        p.len() == expected.len() && p.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("url", &self.url).finish()
    }
}

/// A scheduler's `host[:port]` (the port defaults to 50050, the scheduler's), or why not.
pub fn host_port(addr: &str) -> std::result::Result<(String, u16), &'static str> {
    let (host, port) = match addr.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|_| "the port is not a number")?),
        None => (addr, 50050),
    };
    if host.is_empty() || host.contains(':') {
        return Err("expected a host name or an IPv4 address");
    }
    Ok((host.to_owned(), port))
}

impl Cluster {
    /// `df://host:port` (the port defaults to 50050, the scheduler's).
    pub fn parse(url: &str) -> Result<Cluster> {
        let bad = |why: &str| Error::BadRequest(format!("--cluster {url:?}: {why} (expected df://scheduler-host:50050)"));
        let rest = url.strip_prefix("df://").ok_or_else(|| bad("not a df:// address"))?;
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') || rest.contains('@') {
            return Err(bad("expected a host and a port only"));
        }
        let (host, port) = host_port(rest).map_err(bad)?;
        let scheduler = format!("http://{host}:{port}");
        let planner = BallistaQueryPlanner::<LogicalPlanNode>::with_extension(
            scheduler.clone(),
            BallistaConfig::default(),
            Arc::new(LogicalCodec::default()),
        );
        Ok(Cluster { url: format!("df://{host}:{port}"), scheduler, key: None, planner: Arc::new(planner) })
    }

    /// Present this key to the scheduler with every job.
    pub fn with_key(mut self, key: ClusterKey) -> Cluster {
        self.key = Some(key);
        self
    }

    /// The address as the operator gave it (`df://host:port`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A query session's settings for this cluster ([`configure`]).
    pub fn configure(&self, config: SessionConfig) -> SessionConfig {
        configure(config, self.key.as_ref())
    }

    /// The planner that turns a checked plan into the cluster's job.
    pub fn planner(&self) -> Arc<dyn QueryPlanner + Send + Sync> {
        self.planner.clone()
    }

    /// Whether the scheduler answers: asked before the debit, so that a query while the
    /// scheduler is down spends nothing. (A scheduler that goes down after this answer fails
    /// the query after its debit: charged, like any failure of storage or execution.)
    pub async fn probe(&self) -> Result<()> {
        let unavailable =
            |why: String| Error::Unavailable(format!("the cluster's scheduler at {} did not answer ({why}); nothing was spent", self.url));
        use ballista_core::serde::protobuf::GetJobStatusParams;
        use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
        let endpoint = tonic::transport::Endpoint::from_shared(self.scheduler.clone())
            .map_err(|e| unavailable(e.to_string()))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CONNECT_TIMEOUT);
        let channel = match tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect()).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(unavailable(format!("cannot connect: {}", root_cause(&e)))),
            Err(_) => return Err(unavailable(format!("no answer in {} s", CONNECT_TIMEOUT.as_secs()))),
        };
        // A question about a job that does not exist, asked as a job would be asked: with the
        // cluster key. A scheduler that refuses the key would refuse the query's job after its
        // debit.
        let key = self.key.clone();
        let mut client = SchedulerGrpcClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
            if let Some(k) = &key
                && let Ok(v) = k.0.parse()
            {
                req.metadata_mut().insert(KEY_HEADER, v);
            }
            Ok(req)
        });
        match client.get_job_status(GetJobStatusParams { job_id: "secretum-probe".into() }).await {
            Err(s) if s.code() == tonic::Code::Unauthenticated => {
                Err(unavailable("it refused this node's cluster key: give the API node the scheduler's --cluster-key-file".into()))
            }
            Err(s) if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled) => {
                Err(unavailable(s.code().to_string()))
            }
            _ => Ok(()),
        }
    }

    /// Encode the plan as it will be sent, before the debit: a plan the cluster could not be
    /// given fails here, uncharged, not after the debit.
    pub fn check_encodable(plan: &LogicalPlan) -> Result<()> {
        LogicalPlanNode::try_from_logical_plan(plan, &LogicalCodec::default())
            .map(|_| ())
            .map_err(|e| Error::internal(format!("the plan cannot be sent to the cluster: {}", e.strip_backtrace())))
    }
}

/// The settings a query's session sends with its plan to the scheduler. Each one works around a
/// defect of Ballista 55 found by our tests and demo; none changes an answer (they choose how a
/// plan is executed, not what it computes):
///
/// - Ballista's static distributed planner: its adaptive planner left some of our jobs
///   unfinished for ever (a join over a small filtered public table; once with "stages to be
///   cancelled but its not implemented").
/// - Partitioned hash joins only: under the static planner, a join whose build side is collected
///   whole (DataFusion's `CollectLeft`, chosen for a small build side) was built from only part
///   of that side when the side had several partitions, and an EXISTS cohort counted about half
///   of its patients. Both sides of every join are now hash-partitioned on the join keys, which
///   is how a distributed join is meant to run anyway.
/// - No dynamic filters: when a stage's inputs are resolved, the scheduler optimizes the rest of
///   the plan again and may swap a hash join's inputs, which DataFusion refuses once a dynamic
///   filter was pushed into the join ("Cannot swap HashJoinExec inputs after dynamic filter");
///   the job was then never finished. Dynamic filters only prune reads.
///
/// The cluster key, when there is one, goes with each call to the scheduler.
pub fn configure(config: SessionConfig, key: Option<&ClusterKey>) -> SessionConfig {
    use ballista_core::extension::SessionConfigExt;
    let mut config = config.with_ballista_adaptive_query_planner(false);
    if let Some(k) = key {
        config = config.with_ballista_grpc_metadata(std::collections::HashMap::from([(KEY_HEADER.to_owned(), k.0.clone())]));
    }
    let optimizer = &mut config.options_mut().optimizer;
    optimizer.hash_join_single_partition_threshold = 0;
    optimizer.hash_join_single_partition_threshold_rows = 0;
    optimizer.enable_dynamic_filter_pushdown = false;
    optimizer.enable_join_dynamic_filter_pushdown = false;
    optimizer.enable_topk_dynamic_filter_pushdown = false;
    optimizer.enable_aggregate_dynamic_filter_pushdown = false;
    config
}

/// The longest a query's job may take on the cluster (`SECRETUM_CLUSTER_TIMEOUT`, seconds,
/// default 240, under the service's default request timeout of 300): a job the cluster never
/// finishes fails, charged, instead of holding the query.
pub fn job_timeout() -> Duration {
    std::env::var("SECRETUM_CLUSTER_TIMEOUT")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .map_or(Duration::from_secs(240), Duration::from_secs_f64)
}

/// The innermost cause of an error (a connection error's chain ends in the system's reason).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut e = e;
    while let Some(s) = e.source() {
        e = s;
    }
    e.to_string()
}

/// Ballista's logical codec, plus our kernels and our table.
#[derive(Debug, Default)]
pub struct LogicalCodec {
    inner: BallistaLogicalExtensionCodec,
}

impl LogicalExtensionCodec for LogicalCodec {
    fn try_decode(&self, buf: &[u8], inputs: &[LogicalPlan], ctx: &TaskContext) -> datafusion::error::Result<Extension> {
        self.inner.try_decode(buf, inputs, ctx)
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> datafusion::error::Result<()> {
        self.inner.try_encode(node, buf)
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: SchemaRef,
        ctx: &TaskContext,
    ) -> datafusion::error::Result<Arc<dyn TableProvider>> {
        match buf.strip_prefix(TABLE_TAG) {
            Some(ours) => Counted::decode(ours, schema).map_err(|e| e.context(format!("table {table_ref}"))),
            None => self.inner.try_decode_table_provider(buf, table_ref, schema, ctx),
        }
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> datafusion::error::Result<()> {
        match Counted::encode(node.as_ref()) {
            Some(ours) => {
                buf.extend_from_slice(TABLE_TAG);
                buf.extend_from_slice(&ours);
                Ok(())
            }
            None => self.inner.try_encode_table_provider(table_ref, node, buf),
        }
    }

    fn try_decode_file_format(&self, buf: &[u8], ctx: &TaskContext) -> datafusion::error::Result<Arc<dyn FileFormatFactory>> {
        self.inner.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(&self, buf: &mut Vec<u8>, node: Arc<dyn FileFormatFactory>) -> datafusion::error::Result<()> {
        self.inner.try_encode_file_format(buf, node)
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> datafusion::error::Result<Arc<ScalarUDF>> {
        decode_udf(name, buf)
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> datafusion::error::Result<()> {
        encode_udf(node, buf);
        Ok(())
    }
}

/// Ballista's physical codec (its shuffle operators), plus our kernels.
#[derive(Debug, Default)]
pub struct PhysicalCodec {
    inner: BallistaPhysicalExtensionCodec,
}

impl PhysicalExtensionCodec for PhysicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        self.inner.try_decode(buf, inputs, ctx, proto_converter)
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> datafusion::error::Result<()> {
        self.inner.try_encode(node, buf, proto_converter)
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> datafusion::error::Result<Arc<ScalarUDF>> {
        decode_udf(name, buf)
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> datafusion::error::Result<()> {
        encode_udf(node, buf);
        Ok(())
    }
}

fn encode_udf(node: &ScalarUDF, buf: &mut Vec<u8>) {
    if let Some(k) = total::encode_kernel(node) {
        buf.extend_from_slice(KERNEL_TAG);
        buf.extend_from_slice(&k);
    }
}

fn decode_udf(name: &str, buf: &[u8]) -> datafusion::error::Result<Arc<ScalarUDF>> {
    match buf.strip_prefix(KERNEL_TAG) {
        Some(k) => total::decode_kernel(k).map_err(|e| e.context(format!("function {name}"))),
        None => Err(DataFusionError::Plan(format!("function {name} is neither DataFusion's nor secretum's"))),
    }
}

/// A runtime that reads the warehouse's object store (when it has one) with the node's own
/// credentials.
fn runtime(store: &Store) -> datafusion::error::Result<Arc<RuntimeEnv>> {
    let runtime = RuntimeEnvBuilder::new().build()?;
    store.register(&runtime).map_err(|e| DataFusionError::External(Box::new(e)))?;
    Ok(Arc::new(runtime))
}

/// How a scheduler is started (`secretum scheduler`).
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// The address to listen on: a private network's (the default is loopback).
    pub bind: SocketAddr,
    /// The host name executors and the API node reach the scheduler by.
    pub external_host: String,
    /// Seconds without a heartbeat after which an executor is taken as lost and its tasks are
    /// run again elsewhere.
    pub executor_timeout_secs: u64,
    /// Accept jobs only from callers presenting this key.
    pub key: Option<ClusterKey>,
}

/// Run a Ballista scheduler until the process ends.
pub async fn run_scheduler(opts: SchedulerOptions, store: Store) -> Result<()> {
    use ballista_scheduler::cluster::BallistaCluster;
    use ballista_scheduler::config::SchedulerConfig;

    let builder_store = store.clone();
    let session_builder = Arc::new(move |config: SessionConfig| -> datafusion::error::Result<SessionState> {
        let state = ballista_core::utils::default_session_builder(config)?;
        Ok(SessionStateBuilder::new_from_existing(state).with_runtime_env(runtime(&builder_store)?).build())
    });
    let config = SchedulerConfig {
        bind_host: opts.bind.ip().to_string(),
        bind_port: opts.bind.port(),
        external_host: opts.external_host.clone(),
        scheduling_policy: TaskSchedulingPolicy::PullStaged,
        executor_timeout_seconds: opts.executor_timeout_secs,
        expire_dead_executor_interval_seconds: (opts.executor_timeout_secs / 4).max(1),
        no_executors_grace_period_seconds: opts.executor_timeout_secs,
        override_logical_codec: Some(Arc::new(LogicalCodec::default())),
        override_physical_codec: Some(Arc::new(PhysicalCodec::default())),
        override_session_builder: Some(session_builder),
        ..Default::default()
    };
    let cluster = BallistaCluster::new_from_config(&config).await.map_err(ballista_error)?;
    let Some(key) = opts.key else {
        return ballista_scheduler::scheduler_process::start_server(cluster, opts.bind, Arc::new(config)).await.map_err(ballista_error);
    };
    // Ballista's own server, with the key checked in front of its gRPC service.
    use ballista_core::serde::protobuf::scheduler_grpc_server::SchedulerGrpcServer;
    use datafusion_proto::protobuf::PhysicalPlanNode;
    let config = Arc::new(config);
    let scheduler = ballista_scheduler::scheduler_process::create_scheduler::<LogicalPlanNode, PhysicalPlanNode>(cluster, config.clone())
        .await
        .map_err(ballista_error)?;
    let grpc = SchedulerGrpcServer::new(scheduler)
        .max_encoding_message_size(config.grpc_server_max_encoding_message_size as usize)
        .max_decoding_message_size(config.grpc_server_max_decoding_message_size as usize);
    let mut routes = tonic::service::RoutesBuilder::default();
    routes.add_service(grpc);
    let key = Arc::new(key);
    let router = routes.routes().into_axum_router().layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let key = key.clone();
            async move {
                let presented = req.headers().get(KEY_HEADER).map(|v| v.as_bytes().to_vec());
                if key.admits(req.uri().path(), presented.as_deref()) {
                    return next.run(req).await;
                }
                tracing::warn!(path = req.uri().path(), "a call to the scheduler without the cluster key was refused");
                // gRPC's UNAUTHENTICATED, as a trailers-only response.
                axum::response::Response::builder()
                    .status(200)
                    .header("content-type", "application/grpc")
                    .header("grpc-status", "16")
                    .header("grpc-message", "this scheduler needs the cluster key")
                    .body(axum::body::Body::empty())
                    .unwrap_or_default()
            }
        },
    ));
    let listener = tokio::net::TcpListener::bind(opts.bind).await.map_err(|e| Error::io(opts.bind.to_string(), e))?;
    axum::serve(listener, router).await.map_err(|e| Error::io(opts.bind.to_string(), e))
}

/// How an executor is started (`secretum executor`).
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// The scheduler to ask for work (`host:port`).
    pub scheduler_host: String,
    pub scheduler_port: u16,
    /// The address its data port (Arrow Flight: results and shuffle data) listens on.
    pub bind: SocketAddr,
    /// The host name other nodes reach it by.
    pub external_host: String,
    /// Tasks run at once (0: one per core).
    pub concurrency: usize,
    /// Where it keeps shuffle files.
    pub work_dir: std::path::PathBuf,
    /// Seconds between heartbeats to the scheduler.
    pub heartbeat_secs: u64,
}

/// Run a Ballista executor until the process ends.
pub async fn run_executor(opts: ExecutorOptions, store: Store) -> Result<()> {
    use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};

    std::fs::create_dir_all(&opts.work_dir).map_err(|e| Error::io(&opts.work_dir, e))?;
    let runtime_store = store.clone();
    let config = ExecutorProcessConfig {
        bind_host: opts.bind.ip().to_string(),
        port: opts.bind.port(),
        external_host: Some(opts.external_host.clone()),
        scheduler_host: opts.scheduler_host.clone(),
        scheduler_port: opts.scheduler_port,
        // Wait for a scheduler that is not up yet instead of exiting at once.
        scheduler_connect_timeout_seconds: 60,
        vcores: opts.concurrency,
        task_scheduling_policy: TaskSchedulingPolicy::PullStaged,
        work_dir: Some(opts.work_dir.to_string_lossy().into_owned()),
        executor_heartbeat_interval_seconds: opts.heartbeat_secs,
        override_logical_codec: Some(Arc::new(LogicalCodec::default())),
        override_physical_codec: Some(Arc::new(PhysicalCodec::default())),
        override_runtime_producer: Some(Arc::new(move |_: &SessionConfig| runtime(&runtime_store))),
        ..Default::default()
    };
    start_executor_process(Arc::new(config)).await.map_err(ballista_error)
}

fn ballista_error(e: ballista_core::error::BallistaError) -> Error {
    Error::Unavailable(format!("cluster: {e}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use datafusion::arrow::array::{Float64Array, Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::listing::ListingTableUrl;
    use datafusion::execution::context::SessionContext;
    use datafusion_proto::bytes::{
        logical_plan_from_bytes_with_extension_codec, logical_plan_to_bytes_with_extension_codec,
        physical_plan_from_bytes_with_extension_codec, physical_plan_to_bytes_with_extension_codec,
    };

    #[test]
    fn the_cluster_key_admits_executors_and_key_holders_only() {
        let key = ClusterKey("k".repeat(40));
        let at = |m: &str| format!("/ballista.protobuf.SchedulerGrpc/{m}");
        for m in EXECUTOR_METHODS {
            assert!(key.admits(&at(m), None), "{m}");
        }
        for m in ["ExecuteQuery", "ExecuteQueryPush", "GetJobStatus", "CancelJob", "CreateUpdateSession", "GetJobMetrics"] {
            assert!(!key.admits(&at(m), None), "{m}");
            assert!(!key.admits(&at(m), Some("k".repeat(39).as_bytes())), "{m}");
            assert!(!key.admits(&at(m), Some("j".repeat(40).as_bytes())), "{m}");
            assert!(key.admits(&at(m), Some("k".repeat(40).as_bytes())), "{m}");
        }
        assert!(!key.admits("/arrow.flight.protocol.FlightService/DoGet", None));
        assert!(!key.admits("/other.Service/PollWork", None));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, "0123456789abcdef0123456789abcdef\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(ClusterKey::load(&file), Err(Error::BadRequest(m)) if m.contains("chmod 600")));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(ClusterKey::load(&file).unwrap().0.len(), 32);
        std::fs::write(&file, "short").unwrap();
        assert!(ClusterKey::load(&file).is_err());
    }

    #[test]
    fn cluster_addresses() {
        assert_eq!(Cluster::parse("df://10.0.0.7:50050").unwrap().url(), "df://10.0.0.7:50050");
        assert_eq!(Cluster::parse("df://scheduler").unwrap().url(), "df://scheduler:50050");
        assert_eq!(Cluster::parse("df://scheduler:6000/").unwrap().url(), "df://scheduler:6000");
        for bad in ["http://x:1", "df://", "df://x:port", "df://u@x:1", "df://x:1/path", "df://::1:5"] {
            assert!(matches!(Cluster::parse(bad), Err(Error::BadRequest(_))), "{bad}");
        }
    }

    /// A bounded plan of ours (our table, our kernels, made total) goes to a scheduler as a
    /// logical plan and to executors as physical plans: decoded on a node that knows nothing of
    /// the query, each computes what the API node's plan computes.
    #[tokio::test]
    async fn a_bounded_plan_computes_the_same_after_its_trip_to_the_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true), Field::new("v", DataType::Float64, true)]));
        let ids = Int64Array::from_iter((0..500).map(|i| (i % 17 != 0).then_some(i)));
        let vs = Float64Array::from_iter((0..500).map(|i| (i % 13 != 0).then_some(i as f64 / 7.0 - 20.0)));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(ids), Arc::new(vs)]).unwrap();
        let path = dir.path().join("t.parquet");
        let mut w = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), schema.clone(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let bytes = std::fs::metadata(&path).unwrap().len() as usize;
        let url = ListingTableUrl::parse(path.to_str().unwrap()).unwrap();
        let table = Counted::over(vec![url], schema, 500, bytes).unwrap();

        let api = SessionContext::new_with_config(configure(SessionConfig::new(), None));
        api.register_table("t", table).unwrap();
        let sql = "SELECT id % 3 AS k, COUNT(*) AS n, SUM(v * 2 + 1) AS s, MAX(CAST(id AS DOUBLE) / 7) AS m FROM t WHERE v > -5 GROUP BY 1";
        let state = api.state();
        let plan = api.sql(sql).await.unwrap().into_unoptimized_plan();
        let plan = state.analyzer().execute_and_check(plan, state.config_options(), |_, _| {}).unwrap();
        let plan = state.optimize(&total::make_total(plan).unwrap()).unwrap();
        total::check_total(&plan).unwrap();
        // The rows as a set of lines (partitions can give them in any order).
        let sorted = |b: Vec<RecordBatch>| {
            datafusion::arrow::util::pretty::pretty_format_batches(&b)
                .unwrap()
                .to_string()
                .lines()
                .map(str::to_owned)
                .collect::<std::collections::BTreeSet<_>>()
        };
        let here = api.execute_logical_plan(plan.clone()).await.unwrap().collect().await.unwrap();

        // The scheduler's side: the logical plan, decoded where no table is registered.
        let node = SessionContext::new();
        let sent = logical_plan_to_bytes_with_extension_codec(&plan, &LogicalCodec::default()).unwrap();
        let received = logical_plan_from_bytes_with_extension_codec(&sent, &node.task_ctx(), &LogicalCodec::default()).unwrap();
        let there = node.execute_logical_plan(received).await.unwrap().collect().await.unwrap();
        assert_eq!(sorted(there), sorted(here.clone()));

        // The executors' side: the physical plan.
        let physical = state.create_physical_plan(&plan).await.unwrap();
        let sent = physical_plan_to_bytes_with_extension_codec(physical, &PhysicalCodec::default()).unwrap();
        let received = physical_plan_from_bytes_with_extension_codec(&sent, &node.task_ctx(), &PhysicalCodec::default()).unwrap();
        let there = datafusion::physical_plan::collect(received, node.task_ctx()).await.unwrap();
        assert_eq!(sorted(there), sorted(here));

        // Without our codec, the plan cannot be sent at all (its kernels and table are ours).
        assert!(logical_plan_to_bytes_with_extension_codec(&plan, &BallistaLogicalExtensionCodec::default()).is_err());
        assert!(Cluster::check_encodable(&plan).is_ok());
    }
}
