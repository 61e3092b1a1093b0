//! The `secretum` command line: its arguments (clap) and the dispatch to [`crate::commands`],
//! [`crate::client`], [`crate::demo`] and [`crate::server`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use secretum_engine::dp::QueryRequest;
use secretum_engine::governance::accounts::Role;
use secretum_engine::governance::{Approval, PolicyUpdate, Transition};
use secretum_engine::ingest::Format;
use secretum_engine::{Error, Result};

use crate::commands::{self, local_actor};
use crate::output;

#[derive(Parser, Debug)]
#[command(
    name = "secretum",
    version,
    about = "Sovereign research data warehouse for health data: pseudonymized at ingest, answered only through differential privacy"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// The warehouse's data directory [default: secretum-data].
    #[arg(long, global = true, env = "SECRETUM_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

impl Global {
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| PathBuf::from("secretum-data"))
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a warehouse: data directory, catalog, table policies and a new pseudonymization key.
    Init {
        /// Where to write the 256-bit key (mode 0600); default: <data-dir>/pseudonymization.key.
        /// Keep it on the steward's own volume: whoever holds it can re-identify pseudonyms.
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// Table policies to use instead of the bundled OMOP CDM v5.4 subset.
        #[arg(long)]
        schemas: Option<PathBuf>,
        /// Keep the Parquet files in an S3-compatible object store run by the institution
        /// (`s3://bucket/prefix`) instead of the data directory; the catalog, ledger and audit
        /// log stay in the data directory. Credentials: AWS_ACCESS_KEY_ID and
        /// AWS_SECRET_ACCESS_KEY in the environment, or --s3-credentials.
        #[arg(long, value_name = "s3://BUCKET/PREFIX")]
        store: Option<String>,
        /// The object store's S3 endpoint, e.g. http://10.0.0.5:3900 (a Garage node).
        #[arg(long, requires = "store")]
        s3_endpoint: Option<String>,
        /// The region the object store answers for (Garage's `s3_region`, e.g. `garage`).
        #[arg(long, requires = "store")]
        s3_region: Option<String>,
        /// A file holding `access_key_id = "..."` and `secret_access_key = "..."` (TOML, mode
        /// 0600), used when the environment has no AWS_ACCESS_KEY_ID; its path is recorded,
        /// never its content. (SECRETUM_S3_CREDENTIALS names such a file for every command.)
        #[arg(long, requires = "store")]
        s3_credentials: Option<PathBuf>,
    },
    /// Write deterministic synthetic data: raw extracts (one CSV per table, with direct
    /// identifiers) or an OMOP CDM export, and the vocabulary its codes come from.
    Generate {
        #[arg(long, default_value_t = 10_000)]
        patients: u64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
        /// `extract` (raw extracts with NIRs) or `omop` (an OMOP CDM export: internal person_id).
        #[arg(long, default_value = "extract")]
        format: String,
        /// The CDM version of an OMOP export: 5.3 or 5.4.
        #[arg(long, default_value = "5.4")]
        cdm_version: String,
        /// Upper-case file names and headers (PERSON.csv, PERSON_ID), as many ETL tools write them.
        #[arg(long)]
        upper_case: bool,
    },
    /// Validate, pseudonymize and load a raw extract or an OMOP export into a table, all or
    /// nothing; or every table of an export directory (--dir), in dependency order.
    Ingest {
        /// The table (with --file).
        #[arg(long, required_unless_present = "dir", requires = "file")]
        table: Option<String>,
        #[arg(long)]
        file: Option<PathBuf>,
        /// A directory of files named after their tables (PERSON.csv, condition_occurrence.tsv, ...).
        #[arg(long, conflicts_with_all = ["table", "file"])]
        dir: Option<PathBuf>,
        /// csv (comma or tab separated), parquet or ndjson; default: from the file's extension.
        #[arg(long)]
        format: Option<String>,
        /// The CDM version of an OMOP export (5.3 or 5.4); default: detected from its columns.
        #[arg(long)]
        cdm_version: Option<String>,
        /// Rows whose patient is not in `person`: `reject` (the ingest fails) or `drop`.
        #[arg(long, default_value = "reject")]
        orphans: String,
        /// The pseudonymization key; default: the path recorded at init.
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// Load a file whose exact content was already ingested into this table.
        #[arg(long)]
        allow_duplicate: bool,
    },
    /// The OMOP standardized vocabularies: public reference data.
    #[command(subcommand)]
    Vocabulary(VocabularyCommand),
    /// List tables with their files, rows and bytes (the steward's local view).
    Tables,
    /// The warehouse at a glance: where it is, its key's fingerprint, its data version, and the
    /// public key release bundles are signed with.
    Info,
    /// Signed release bundles: export one, or check one offline.
    #[command(subcommand)]
    Release(ReleaseCommand),
    /// Projects and their privacy budgets (steward).
    #[command(subcommand)]
    Project(ProjectCommand),
    /// Warehouse-wide privacy policy (steward).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Answer one SQL query with differentially-private aggregates, charged to a project
    /// (locally on the data directory, or on a server with --server and --token).
    Query(QueryArgs),
    /// Accounts and their bearer tokens (admin, on the data directory).
    #[command(subcommand)]
    User(UserCommand),
    /// Run the HTTP service for researchers and stewards.
    Serve(ServeArgs),
    /// The hash-chained audit log (steward).
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Print the HTTP API's OpenAPI 3 document.
    Openapi,
    /// Every function and operator a query may use, with what it gives where SQL would raise an
    /// error (queries are evaluated with total semantics: nothing can fail on a data value).
    Functions,
    /// The whole job on a temporary warehouse: generate, init, ingest every table, summarize, query.
    Demo {
        #[arg(long, default_value_t = 20_000)]
        patients: u64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Keep the demo's directory instead of deleting it at the end.
        #[arg(long)]
        keep: bool,
        /// Run it on a cluster on loopback: a Garage object store (when its binary is found), a
        /// scheduler and two executors, started for the demo and stopped after it.
        #[arg(long)]
        cluster: bool,
    },
    /// Run a cluster scheduler (Apache DataFusion Ballista, with secretum's functions and
    /// codecs): it takes the bounded plans of API nodes started with `serve --cluster` and hands
    /// their tasks to executors. Bind it to a private network only: whoever reaches its port can
    /// submit work.
    Scheduler(SchedulerArgs),
    /// Run a cluster executor: it asks the scheduler for tasks (it accepts work from nowhere
    /// else) and reads the Parquet files from the warehouse's object store.
    Executor(ExecutorArgs),
}

/// Where the warehouse's Parquet files are, for a cluster node (the API node reads it from its
/// catalog; a node has no catalog). Local files need no option (one box, or a shared path).
#[derive(Args, Debug, Clone, Default)]
pub struct NodeStoreArgs {
    /// The warehouse's object store, as given to `init --store` (`s3://bucket/prefix`).
    #[arg(long, value_name = "s3://BUCKET/PREFIX", env = "SECRETUM_STORE")]
    pub store: Option<String>,
    /// The object store's S3 endpoint, e.g. http://10.0.0.5:3900.
    #[arg(long, requires = "store", env = "SECRETUM_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// The region the object store answers for (Garage's `s3_region`).
    #[arg(long, requires = "store", env = "SECRETUM_S3_REGION")]
    pub s3_region: Option<String>,
    /// The credentials file (TOML, mode 0600), when the environment has no AWS_ACCESS_KEY_ID.
    #[arg(long, requires = "store", env = "SECRETUM_S3_CREDENTIALS")]
    pub s3_credentials: Option<PathBuf>,
}

impl NodeStoreArgs {
    pub fn connect(&self) -> Result<secretum_engine::store::Store> {
        match &self.store {
            None => Ok(secretum_engine::store::Store::Local),
            Some(url) => secretum_engine::store::Store::connect(&secretum_engine::store::StoreConfig {
                url: url.clone(),
                endpoint: self.s3_endpoint.clone(),
                region: self.s3_region.clone(),
                credentials_file: self.s3_credentials.clone(),
            }),
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct SchedulerArgs {
    /// The address to listen on (a private network's).
    #[arg(long, default_value = "127.0.0.1:50050", env = "SECRETUM_SCHEDULER_BIND")]
    pub bind: std::net::SocketAddr,
    /// The host name or address executors and API nodes reach this scheduler by [default: the
    /// --bind address].
    #[arg(long)]
    pub external_host: Option<String>,
    /// Seconds without a heartbeat after which an executor is taken as lost and its tasks run
    /// again on the others.
    #[arg(long, default_value_t = 30)]
    pub executor_timeout: u64,
    /// Accept jobs only from API nodes presenting this key (a file of mode 0600 holding one line
    /// of at least 32 characters, e.g. from `openssl rand -hex 32`); give the same file to
    /// `serve --cluster-key-file`.
    #[arg(long, env = "SECRETUM_CLUSTER_KEY_FILE")]
    pub cluster_key_file: Option<PathBuf>,
    #[command(flatten)]
    pub store: NodeStoreArgs,
}

#[derive(Args, Debug, Clone)]
pub struct ExecutorArgs {
    /// The scheduler to ask for work.
    #[arg(long, default_value = "127.0.0.1:50050", env = "SECRETUM_SCHEDULER")]
    pub scheduler: String,
    /// The address its data port listens on (results and shuffle data; a private network's).
    #[arg(long, default_value = "127.0.0.1:50051", env = "SECRETUM_EXECUTOR_BIND")]
    pub bind: std::net::SocketAddr,
    /// The host name or address other nodes reach this executor by [default: the --bind
    /// address].
    #[arg(long)]
    pub external_host: Option<String>,
    /// Tasks run at once [default: one per core].
    #[arg(long, default_value_t = 0)]
    pub concurrency: usize,
    /// Where it keeps intermediate (shuffle) files [default: a directory under the system's
    /// temporary directory, named after the port].
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Seconds between heartbeats to the scheduler (keep it well under the scheduler's
    /// --executor-timeout).
    #[arg(long, default_value_t = 5)]
    pub heartbeat: u64,
    #[command(flatten)]
    pub store: NodeStoreArgs,
}

#[derive(Subcommand, Debug)]
pub enum ReleaseCommand {
    /// Write the signed bundle of an answered query: SQL, plan and bounds, mechanisms, ε/δ, the
    /// released table, data version, time, project and audit entry.
    Export {
        /// The query id (as the answer and `project show` give it).
        query_id: i64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a bundle with the warehouse's public key (from `secretum info` or
    /// `/v1/signing-key`), on any machine; says what was checked.
    Verify {
        bundle: PathBuf,
        /// The warehouse's public key (64 hex digits).
        #[arg(long)]
        public_key: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum VocabularyCommand {
    /// Load an Athena download (CONCEPT.csv, CONCEPT_ANCESTOR.csv, ...: tab-separated, dates
    /// YYYYMMDD), each table replacing the one loaded before.
    Load { dir: PathBuf },
    /// Concepts whose name contains the words, or whose code or id is given.
    Search {
        query: String,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

#[derive(Subcommand, Debug)]
pub enum ProjectCommand {
    /// Create a project with its budget and the tables it may query.
    Create {
        #[arg(long)]
        name: String,
        /// Total ε the project may spend (basic composition over its queries).
        #[arg(long)]
        epsilon: f64,
        /// Total δ the project may spend (only grouping without a public domain spends δ).
        #[arg(long, default_value_t = 0.0)]
        delta: f64,
        /// Comma-separated table names.
        #[arg(long, value_delimiter = ',', required = true)]
        tables: Vec<String>,
        /// How queries compose: `pure` (ε adds up, Laplace noise) or `zcdp` (ρ-zCDP: ρ adds up,
        /// Gaussian noise; the grant (ε, δ) is converted to the largest ρ that implies it, and
        /// many queries cost far less ε than summing; needs --delta > 0).
        #[arg(long, default_value = "pure")]
        accounting: String,
    },
    /// List projects with their budgets spent and left.
    List,
    /// One project: grant, spend, and its ledger entries.
    Show { name: String },
    /// Approve a pending request; options left out are granted as requested.
    Approve {
        /// Project id or name.
        project: String,
        #[arg(long)]
        epsilon: Option<f64>,
        #[arg(long)]
        delta: Option<f64>,
        /// A subset of the requested tables, comma-separated.
        #[arg(long, value_delimiter = ',')]
        tables: Option<Vec<String>>,
        /// RFC 3339 time, e.g. 2027-06-30T00:00:00Z (default: now + requested duration).
        #[arg(long)]
        expires_at: Option<String>,
        /// `pure` or `zcdp` (ρ-zCDP with Gaussian noise; see `project create --help`); default:
        /// as requested.
        #[arg(long)]
        accounting: Option<String>,
    },
    /// Reject a pending request.
    Reject {
        project: String,
        #[arg(long)]
        reason: String,
    },
    /// Suspend an active project (its budget is kept).
    Suspend {
        project: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Resume a suspended project.
    Resume { project: String },
    /// Close a project for good.
    Close { project: String },
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Create an account; prints its bearer token once.
    Add {
        #[arg(long)]
        name: String,
        /// admin, steward or researcher.
        #[arg(long)]
        role: String,
    },
    /// Accounts and their active tokens (prefixes only).
    List,
    /// Revoke every token of an account.
    Revoke { name: String },
    /// Revoke an account's tokens and print a new one.
    Rotate { name: String },
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Recompute the hash chain; exits non-zero at the first broken entry.
    Verify,
    /// Write the log as JSON lines (stdout, or --out).
    Export {
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "SECRETUM_LISTEN")]
    pub listen: Option<std::net::SocketAddr>,
    /// A TOML file with any of: listen, data_dir, body_limit, request_timeout_secs, rate_limit,
    /// rate_burst, max_concurrency, max_queries, tls_cert, tls_key. Options given here win.
    #[arg(long, env = "SECRETUM_CONFIG")]
    pub config: Option<PathBuf>,
    /// PEM certificate chain: serve HTTPS (with --tls-key).
    #[arg(long, env = "SECRETUM_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key.
    #[arg(long, env = "SECRETUM_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Average requests per second per account (0 disables) [default: 20].
    #[arg(long, env = "SECRETUM_RATE_LIMIT")]
    pub rate_limit: Option<f64>,
    /// Burst per account [default: 40].
    #[arg(long, env = "SECRETUM_RATE_BURST")]
    pub rate_burst: Option<f64>,
    /// Largest request body in bytes [default: 262144].
    #[arg(long, env = "SECRETUM_BODY_LIMIT")]
    pub body_limit: Option<usize>,
    /// Per-request timeout in seconds [default: 300].
    #[arg(long, env = "SECRETUM_REQUEST_TIMEOUT")]
    pub request_timeout: Option<f64>,
    /// Queries executed at once [default: 2 per core].
    #[arg(long, env = "SECRETUM_MAX_QUERIES")]
    pub max_queries: Option<usize>,
    /// Execute the bounded plans on a cluster (`df://scheduler-host:50050`, a `secretum
    /// scheduler`); analysis, the ledger, noise and audit stay here.
    #[arg(long, env = "SECRETUM_CLUSTER", value_name = "df://HOST:PORT")]
    pub cluster: Option<String>,
    /// The key the cluster's scheduler was started with (`scheduler --cluster-key-file`).
    #[arg(long, env = "SECRETUM_CLUSTER_KEY_FILE", requires = "cluster")]
    pub cluster_key_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Change the policy; only the options given change.
    Set {
        /// The total ε any one patient may lose across all projects together.
        #[arg(long)]
        patient_epsilon_cap: Option<f64>,
        /// The total δ any one patient may lose across all projects together (default 1e-5).
        #[arg(long)]
        patient_delta_cap: Option<f64>,
        /// The largest ε a single query may spend.
        #[arg(long)]
        query_epsilon_cap: Option<f64>,
        /// Noisy counts under this threshold are suppressed (0 disables).
        #[arg(long)]
        suppression_threshold: Option<u32>,
        /// Decimal digits kept in released non-count values.
        #[arg(long)]
        round_digits: Option<u32>,
    },
    /// Print the policy and the ε and δ spent warehouse-wide.
    Show,
}

#[derive(Args, Debug)]
pub struct QueryArgs {
    /// The project to charge.
    #[arg(long)]
    pub project: String,
    /// ε to spend on this query (split across its aggregates).
    #[arg(long, default_value_t = 0.1)]
    pub epsilon: f64,
    /// δ to spend (needed only to group by a column without a public domain), in (0, 1e-3].
    #[arg(long)]
    pub delta: Option<f64>,
    /// Show the answer's shape and expected accuracy; spends nothing and reads no data.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the ε needed for a 95% interval of ±X on the query's counts and sums (spends nothing).
    #[arg(long, value_name = "X")]
    pub target_ci: Option<f64>,
    /// Tighten the number of groups one patient may contribute to.
    #[arg(long)]
    pub max_groups: Option<u32>,
    /// table, json or csv.
    #[arg(long, default_value = "table")]
    pub format: String,
    /// Ask a running service instead of the local data directory.
    #[arg(long, env = "SECRETUM_SERVER")]
    pub server: Option<String>,
    /// Bearer token for --server.
    #[arg(long, env = "SECRETUM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM file of the certificate authority (or self-signed certificate) to trust for an
    /// https --server; default: the usual public roots.
    #[arg(long, env = "SECRETUM_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// The SQL text (one SELECT).
    pub sql: String,
}

/// Parse the command line, run, and turn errors into a message and an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(if matches!(cli.command, Command::Serve(_) | Command::Scheduler(_) | Command::Executor(_)) { "info" } else { "warn" });
    quiet_panics();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A panic's message could quote a value it was handed; log where it happened, never what.
fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| {
        let at = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        tracing::error!(location = %at, "internal panic (its message is not logged: it could quote a value)");
    }));
}

fn init_tracing(default: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("SECRETUM_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

fn cdm_version_arg(s: &str) -> Result<secretum_engine::omop::CdmVersion> {
    secretum_engine::omop::CdmVersion::parse(s).ok_or_else(|| Error::BadRequest(format!("unknown CDM version `{s}`: expected 5.3 or 5.4")))
}

fn accounting_arg(s: &str) -> Result<secretum_engine::governance::Accounting> {
    secretum_engine::governance::Accounting::parse(s)
        .ok_or_else(|| Error::BadRequest(format!("unknown accounting `{s}`: expected pure or zcdp")))
}

pub fn run(cli: Cli) -> Result<()> {
    let explicit_data_dir = cli.global.data_dir.clone();
    let data_dir = cli.global.data_dir();
    let d = data_dir.as_path();
    match cli.command {
        Command::Init { key_file, schemas, store, s3_endpoint, s3_region, s3_credentials } => {
            let store = store.map(|url| secretum_engine::store::StoreConfig {
                url,
                endpoint: s3_endpoint,
                region: s3_region,
                credentials_file: s3_credentials,
            });
            commands::warehouse::init(d, key_file.as_deref(), schemas.as_deref(), store.as_ref())
        }
        Command::Generate { patients, seed, out, format, cdm_version, upper_case } => {
            let omop = match format.as_str() {
                "extract" | "raw" => None,
                "omop" => Some(secretum_engine::synth::OmopOptions { version: cdm_version_arg(&cdm_version)?, upper_case }),
                other => return Err(Error::BadRequest(format!("unknown format `{other}`: expected extract or omop"))),
            };
            commands::warehouse::generate(patients, seed, &out, omop)
        }
        Command::Ingest { table, file, dir, format, cdm_version, orphans, key_file, allow_duplicate } => {
            let format = match format {
                Some(f) => Some(
                    Format::parse(&f).ok_or_else(|| Error::BadRequest(format!("unknown format `{f}`: expected csv, parquet or ndjson")))?,
                ),
                None => None,
            };
            let options = commands::warehouse::IngestArgs {
                format,
                cdm_version: cdm_version.as_deref().map(cdm_version_arg).transpose()?,
                orphans: match orphans.as_str() {
                    "reject" => secretum_engine::ingest::Orphans::Reject,
                    "drop" => secretum_engine::ingest::Orphans::Drop,
                    other => return Err(Error::BadRequest(format!("unknown --orphans `{other}`: expected reject or drop"))),
                },
                allow_duplicate,
            };
            match (dir, table, file) {
                (Some(dir), _, _) => commands::warehouse::ingest_dir(d, &dir, key_file.as_deref(), &options),
                (None, Some(table), Some(file)) => commands::warehouse::ingest(d, &table, &file, key_file.as_deref(), &options),
                _ => Err(Error::BadRequest("give --table and --file, or --dir".into())),
            }
        }
        Command::Vocabulary(cmd) => match cmd {
            VocabularyCommand::Load { dir } => commands::warehouse::vocabulary_load(d, &dir),
            VocabularyCommand::Search { query, limit } => commands::warehouse::vocabulary_search(d, &query, limit),
        },
        Command::Tables => commands::warehouse::tables(d),
        Command::Info => commands::release::info(d),
        Command::Release(cmd) => match cmd {
            ReleaseCommand::Export { query_id, out } => commands::release::export(d, query_id, &out),
            ReleaseCommand::Verify { bundle, public_key } => commands::release::verify(&bundle, &public_key),
        },
        Command::Project(cmd) => match cmd {
            ProjectCommand::Create { name, epsilon, delta, tables, accounting } => {
                commands::projects::create(d, &name, epsilon, delta, &tables, accounting_arg(&accounting)?)
            }
            ProjectCommand::List => commands::projects::list(d),
            ProjectCommand::Show { name } => commands::projects::show(d, &name),
            ProjectCommand::Approve { project, epsilon, delta, tables, expires_at, accounting } => {
                let accounting = accounting.as_deref().map(accounting_arg).transpose()?;
                commands::projects::approve(d, &project, &Approval { epsilon, delta, tables, expires_at, accounting })
            }
            ProjectCommand::Reject { project, reason } => commands::projects::reject(d, &project, &reason),
            ProjectCommand::Suspend { project, reason } => {
                commands::projects::transition(d, &project, Transition::Suspend, reason.as_deref())
            }
            ProjectCommand::Resume { project } => commands::projects::transition(d, &project, Transition::Resume, None),
            ProjectCommand::Close { project } => commands::projects::transition(d, &project, Transition::Close, None),
        },
        Command::Policy(cmd) => match cmd {
            PolicyCommand::Set { patient_epsilon_cap, patient_delta_cap, query_epsilon_cap, suppression_threshold, round_digits } => {
                let update =
                    PolicyUpdate { patient_epsilon_cap, patient_delta_cap, query_epsilon_cap, suppression_threshold, round_digits };
                commands::policy::set(d, &update)
            }
            PolicyCommand::Show => commands::policy::show(d),
        },
        Command::Query(args) => {
            let format: output::Format = args.format.parse()?;
            let req = QueryRequest {
                actor: local_actor(),
                project: args.project,
                sql: args.sql,
                epsilon: args.epsilon,
                delta: args.delta,
                dry_run: args.dry_run,
                target_ci: args.target_ci,
                max_groups: args.max_groups,
            };
            match (&args.server, &args.token) {
                (Some(server), Some(token)) => crate::client::query(server, token, args.ca_cert.as_deref(), &req, format),
                (Some(_), None) => Err(Error::BadRequest("--server needs --token (or SECRETUM_TOKEN)".into())),
                (None, _) => commands::query::run(d, &req, format),
            }
        }
        Command::User(cmd) => match cmd {
            UserCommand::Add { name, role } => commands::users::add(d, &name, role.parse::<Role>()?),
            UserCommand::List => commands::users::list(d),
            UserCommand::Revoke { name } => commands::users::revoke(d, &name),
            UserCommand::Rotate { name } => commands::users::rotate(d, &name),
        },
        Command::Audit(cmd) => match cmd {
            AuditCommand::Verify => commands::audit::verify(d),
            AuditCommand::Export { out } => commands::audit::export(d, out.as_deref()),
        },
        Command::Openapi => {
            println!("{}", crate::server::openapi::document());
            Ok(())
        }
        Command::Functions => {
            print!("{}", secretum_engine::dp::total::describe());
            Ok(())
        }
        Command::Serve(args) => serve(explicit_data_dir, args),
        Command::Demo { patients, seed, keep, cluster } => crate::demo::run(patients, seed, keep, cluster),
        Command::Scheduler(args) => scheduler(args),
        Command::Executor(args) => executor(args),
    }
}

/// A runtime for a cluster node: large stacks, as plans are decoded recursively.
fn node_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(16 * 1024 * 1024)
        .build()
        .map_err(|e| Error::internal(format!("cannot start the runtime: {e}")))
}

fn scheduler(args: SchedulerArgs) -> Result<()> {
    let store = args.store.connect()?;
    let opts = secretum_engine::cluster::SchedulerOptions {
        bind: args.bind,
        external_host: args.external_host.unwrap_or_else(|| args.bind.ip().to_string()),
        executor_timeout_secs: args.executor_timeout.max(2),
        key: args.cluster_key_file.as_deref().map(secretum_engine::cluster::ClusterKey::load).transpose()?,
    };
    eprintln!(
        "secretum scheduler listening on {} (executors and API nodes: df://{}:{}); {}",
        opts.bind,
        opts.external_host,
        opts.bind.port(),
        if opts.key.is_some() { "jobs only with the cluster key" } else { "no cluster key: jobs from whoever reaches this port" }
    );
    node_runtime()?.block_on(secretum_engine::cluster::run_scheduler(opts, store))
}

fn executor(args: ExecutorArgs) -> Result<()> {
    let store = args.store.connect()?;
    let (host, port) = secretum_engine::cluster::host_port(args.scheduler.trim_start_matches("df://"))
        .map_err(|why| Error::BadRequest(format!("--scheduler {:?}: {why}", args.scheduler)))?;
    let opts = secretum_engine::cluster::ExecutorOptions {
        scheduler_host: host,
        scheduler_port: port,
        bind: args.bind,
        external_host: args.external_host.unwrap_or_else(|| args.bind.ip().to_string()),
        concurrency: args.concurrency,
        work_dir: args.work_dir.unwrap_or_else(|| std::env::temp_dir().join(format!("secretum-executor-{}", args.bind.port()))),
        heartbeat_secs: args.heartbeat.max(1),
    };
    eprintln!("secretum executor on {}, asking the scheduler at {}:{} for work", opts.bind, opts.scheduler_host, opts.scheduler_port);
    node_runtime()?.block_on(secretum_engine::cluster::run_executor(opts, store))
}

fn serve(data_dir: Option<PathBuf>, args: ServeArgs) -> Result<()> {
    let mut config = match &args.config {
        Some(path) => crate::server::Config::from_file(path)?,
        None => crate::server::Config::default(),
    };
    if let Some(d) = data_dir {
        config.data_dir = d;
    }
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if args.tls_cert.is_some() {
        config.tls_cert = args.tls_cert;
    }
    if args.tls_key.is_some() {
        config.tls_key = args.tls_key;
    }
    config.rate_limit = args.rate_limit.unwrap_or(config.rate_limit);
    config.rate_burst = args.rate_burst.unwrap_or(config.rate_burst);
    config.body_limit = args.body_limit.unwrap_or(config.body_limit);
    config.request_timeout_secs = args.request_timeout.unwrap_or(config.request_timeout_secs);
    config.max_queries = args.max_queries.unwrap_or(config.max_queries);
    if args.cluster.is_some() {
        config.cluster = args.cluster;
    }
    if args.cluster_key_file.is_some() {
        config.cluster_key_file = args.cluster_key_file;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::internal(format!("cannot start the runtime: {e}")))?;
    rt.block_on(crate::server::serve(config))
}
