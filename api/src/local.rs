//! Services started on loopback for `secretum demo --cluster` (and the tests and benches that
//! try the cluster): a one-node Garage object store, a scheduler and executors, each its own
//! process, stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use secretum_engine::store::StoreConfig;
use secretum_engine::{Error, Result};

/// The Garage version the project is tried with.
pub const GARAGE_VERSION: &str = "2.5.0";

/// Where `cargo install` puts a Garage built for this project (`<home>/.cache/...`).
pub fn garage_cache_root() -> PathBuf {
    let home = PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/tmp".into()));
    home.join(format!(".cache/secretum-garage-{GARAGE_VERSION}"))
}

/// The `garage` binary, if this machine has one: `SECRETUM_GARAGE`, a Garage 2.x on the PATH,
/// or the one built into [`garage_cache_root`].
pub fn find_garage() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SECRETUM_GARAGE") {
        return Some(PathBuf::from(p));
    }
    if let Ok(out) = Command::new("garage").arg("--version").output()
        && String::from_utf8_lossy(&out.stdout).contains(" 2.")
    {
        return Some(PathBuf::from("garage"));
    }
    Some(garage_cache_root().join("bin/garage")).filter(|b| b.exists())
}

/// The command that builds Garage into [`garage_cache_root`].
pub fn garage_install_command() -> String {
    format!(
        "cargo install garage --version {GARAGE_VERSION} --locked --no-default-features --features sqlite,bundled-libs --root {}",
        garage_cache_root().display()
    )
}

fn listen_any() -> Result<std::net::TcpListener> {
    std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io("127.0.0.1:0", e))
}

fn port_of(l: &std::net::TcpListener) -> Result<u16> {
    l.local_addr().map(|a| a.port()).map_err(|e| Error::io("127.0.0.1:0", e))
}

/// A port free on loopback when asked.
pub fn free_port() -> Result<u16> {
    port_of(&listen_any()?)
}

/// Two distinct free ports on loopback (both held while the second is chosen).
pub fn free_ports() -> Result<(u16, u16)> {
    let (a, b) = (listen_any()?, listen_any()?);
    Ok((port_of(&a)?, port_of(&b)?))
}

fn set_mode_600(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| Error::io(path, e))
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A one-node Garage on loopback with a bucket `secretum` and a key allowed on it.
pub struct Garage {
    child: Child,
    config: PathBuf,
    bin: PathBuf,
    pub endpoint: String,
    pub credentials: PathBuf,
    _dir: tempfile::TempDir,
}

impl Garage {
    /// Start Garage and make its layout, bucket and key. A port taken by another process
    /// between its choice and Garage's bind makes Garage exit: it is started again on others.
    pub fn start(bin: &Path) -> Result<Garage> {
        let mut last = String::new();
        for _ in 0..3 {
            match Garage::try_start(bin)? {
                Ok(g) => return Ok(g),
                Err(why) => last = why,
            }
        }
        Err(Error::Unavailable(format!("Garage did not start: {last}")))
    }

    fn try_start(bin: &Path) -> Result<std::result::Result<Garage, String>> {
        let dir = tempfile::Builder::new().prefix("secretum-garage-").tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
        let (rpc, s3) = free_ports()?;
        let secret: String = {
            use sha2::{Digest, Sha256};
            hex::encode(Sha256::digest(format!("{}{:?}", dir.path().display(), Instant::now())))
        };
        let config = dir.path().join("garage.toml");
        std::fs::write(
            &config,
            format!(
                "metadata_dir = \"{m}\"\ndata_dir = \"{d}\"\ndb_engine = \"sqlite\"\nreplication_factor = 1\n\
                 rpc_bind_addr = \"127.0.0.1:{rpc}\"\nrpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret}\"\n\
                 [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3}\"\nroot_domain = \".s3.garage.localhost\"\n",
                m = dir.path().join("meta").display(),
                d = dir.path().join("data").display(),
            ),
        )
        .map_err(|e| Error::io(&config, e))?;
        set_mode_600(&config)?;
        let log = dir.path().join("server.log");
        let child = Command::new(bin)
            .arg("-c")
            .arg(&config)
            .arg("server")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).map_err(|e| Error::io(&log, e))?)
            .spawn()
            .map_err(|e| Error::io(bin, e))?;
        let mut g = Garage {
            child,
            config,
            bin: bin.to_owned(),
            endpoint: format!("http://127.0.0.1:{s3}"),
            credentials: dir.path().join("s3.toml"),
            _dir: dir,
        };
        let started = Instant::now();
        let node = loop {
            if let Ok(id) = g.cli(&["node", "id", "-q"]) {
                break id.trim().split('@').next().unwrap_or_default().to_owned();
            }
            if g.child.try_wait().ok().flatten().is_some() {
                return Ok(Err("it exited at start (a port taken?)".into()));
            }
            if started.elapsed() > Duration::from_secs(60) {
                return Ok(Err("it did not answer within 60 s".into()));
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let setup = |g: &Garage| -> std::result::Result<(), String> {
            g.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node])?;
            g.cli(&["layout", "apply", "--version", "1"])?;
            g.cli(&["bucket", "create", "secretum"])?;
            let key = g.cli(&["key", "create", "secretum"])?;
            let field =
                |name: &str| key.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_owned()).ok_or(format!("no {name}"));
            let (id, secret) = (field("Key ID:")?, field("Secret key:")?);
            g.cli(&["bucket", "allow", "--read", "--write", "--owner", "secretum", "--key", "secretum"])?;
            std::fs::write(&g.credentials, format!("access_key_id = \"{id}\"\nsecret_access_key = \"{secret}\"\n"))
                .map_err(|e| e.to_string())?;
            set_mode_600(&g.credentials).map_err(|e| e.to_string())
        };
        Ok(setup(&g).map(|_| g))
    }

    fn cli(&self, args: &[&str]) -> std::result::Result<String, String> {
        let out = Command::new(&self.bin).arg("-c").arg(&self.config).args(args).output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// The store settings of a warehouse under `prefix` in the bucket.
    pub fn config(&self, prefix: &str) -> StoreConfig {
        StoreConfig {
            url: format!("s3://secretum/{prefix}"),
            endpoint: Some(self.endpoint.clone()),
            region: Some("garage".into()),
            credentials_file: Some(self.credentials.clone()),
        }
    }

    pub fn stop(&mut self) {
        stop(&mut self.child);
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A scheduler and executors on loopback, each a `secretum` process.
pub struct LocalCluster {
    exe: PathBuf,
    store: Option<StoreConfig>,
    dir: PathBuf,
    scheduler: Option<Child>,
    pub scheduler_port: u16,
    executors: Vec<Option<Child>>,
    /// Each executor's data port, in start order.
    pub executor_ports: Vec<u16>,
    /// The cluster key the scheduler asks for (a new one per cluster).
    pub key_file: PathBuf,
}

impl LocalCluster {
    /// Start a scheduler and `executors` executors of the binary `exe`, reading `store` (local
    /// files when none), their logs and work directories under `dir`. Returns once every
    /// process listens.
    pub fn start(exe: &Path, store: Option<&StoreConfig>, executors: usize, dir: &Path) -> Result<LocalCluster> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut c = LocalCluster {
            exe: exe.to_owned(),
            store: store.cloned(),
            dir: dir.to_owned(),
            scheduler: None,
            scheduler_port: 0,
            executors: Vec::new(),
            executor_ports: Vec::new(),
            key_file: dir.join("cluster.key"),
        };
        let key = {
            use sha2::{Digest, Sha256};
            hex::encode(Sha256::digest(format!("{}{:?}{}", dir.display(), Instant::now(), std::process::id())))
        };
        std::fs::write(&c.key_file, format!("{key}\n")).map_err(|e| Error::io(&c.key_file, e))?;
        set_mode_600(&c.key_file)?;
        c.start_scheduler()?;
        for _ in 0..executors {
            c.add_executor()?;
        }
        Ok(c)
    }

    /// `df://127.0.0.1:<port>`, for `serve --cluster`.
    pub fn url(&self) -> String {
        format!("df://127.0.0.1:{}", self.scheduler_port)
    }

    /// The cluster as an API node reaches it (with its key).
    pub fn cluster(&self) -> Result<secretum_engine::cluster::Cluster> {
        Ok(secretum_engine::cluster::Cluster::parse(&self.url())?.with_key(secretum_engine::cluster::ClusterKey::load(&self.key_file)?))
    }

    fn command(&self, what: &str, log: &str) -> Result<Command> {
        let mut cmd = Command::new(&self.exe);
        cmd.arg(what);
        if let Some(s) = &self.store {
            cmd.arg("--store").arg(&s.url);
            if let Some(e) = &s.endpoint {
                cmd.arg("--s3-endpoint").arg(e);
            }
            if let Some(r) = &s.region {
                cmd.arg("--s3-region").arg(r);
            }
            if let Some(f) = &s.credentials_file {
                cmd.arg("--s3-credentials").arg(f);
            }
        }
        let log = self.dir.join(log);
        let file = std::fs::File::create(&log).map_err(|e| Error::io(&log, e))?;
        cmd.stdout(Stdio::null()).stderr(file).env_remove("AWS_ACCESS_KEY_ID").env_remove("AWS_SECRET_ACCESS_KEY");
        Ok(cmd)
    }

    /// Start the scheduler (again, after [`LocalCluster::stop_scheduler`], on the same port).
    pub fn start_scheduler(&mut self) -> Result<()> {
        if self.scheduler_port == 0 {
            self.scheduler_port = free_port()?;
        }
        let mut cmd = self.command("scheduler", "scheduler.log")?;
        cmd.arg("--bind")
            .arg(format!("127.0.0.1:{}", self.scheduler_port))
            .arg("--executor-timeout")
            .arg("10")
            .arg("--cluster-key-file")
            .arg(&self.key_file);
        let child = cmd.spawn().map_err(|e| Error::io(&self.exe, e))?;
        self.scheduler = Some(child);
        wait_for_port(self.scheduler_port, "the scheduler", self.scheduler.as_mut(), &self.dir.join("scheduler.log"))
    }

    /// Start one more executor.
    pub fn add_executor(&mut self) -> Result<()> {
        let port = free_port()?;
        let n = self.executors.len();
        let mut cmd = self.command("executor", &format!("executor-{n}.log"))?;
        cmd.arg("--scheduler")
            .arg(format!("127.0.0.1:{}", self.scheduler_port))
            .arg("--bind")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--concurrency")
            .arg("2")
            .arg("--heartbeat")
            .arg("2")
            .arg("--work-dir")
            .arg(self.dir.join(format!("executor-{n}")));
        let mut child = cmd.spawn().map_err(|e| Error::io(&self.exe, e))?;
        let waited = wait_for_port(port, "an executor", Some(&mut child), &self.dir.join(format!("executor-{n}.log")));
        self.executors.push(Some(child));
        self.executor_ports.push(port);
        waited
    }

    /// Kill executor `i` (SIGKILL: no goodbye to the scheduler).
    pub fn kill_executor(&mut self, i: usize) {
        if let Some(Some(c)) = self.executors.get_mut(i) {
            stop(c);
        }
        if let Some(slot) = self.executors.get_mut(i) {
            *slot = None;
        }
    }

    pub fn stop_scheduler(&mut self) {
        if let Some(mut c) = self.scheduler.take() {
            stop(&mut c);
        }
    }

    /// The processes' logs (for a failing test's message).
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                out.push_str(&format!("--- {}\n", p.display()));
                for l in tail.into_iter().rev() {
                    out.push_str(l);
                    out.push('\n');
                }
            }
        }
        out
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for c in self.executors.iter_mut().flatten() {
            stop(c);
        }
        self.stop_scheduler();
    }
}

/// Wait until something listens on `port` (or the process exits, or 60 s pass).
fn wait_for_port(port: u16, what: &str, mut child: Option<&mut Child>, log: &Path) -> Result<()> {
    let started = Instant::now();
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Some(c) = child.as_deref_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").to_owned();
            return Err(Error::Unavailable(format!("{what} exited ({status}) before listening on port {port}: {last}")));
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err(Error::Unavailable(format!("{what} did not listen on port {port} within 60 s")));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
