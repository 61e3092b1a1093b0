//! The steward console in a real browser: Debian's chromium, headless, driven through
//! chromedriver (WebDriver) against the real server on loopback. Screenshots of the key steps
//! go to the test's output directory (`<target>/tmp/console-screenshots`).
//!
//! The test installs `chromium` and `chromium-driver` with apt-get when they are missing and it
//! runs as root; otherwise it fails saying what to install.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::service::{Server, call, user, warehouse};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

fn ensure_browser() {
    if Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists() {
        return;
    }
    let root = Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false);
    assert!(
        root && Path::new("/usr/bin/apt-get").exists(),
        "the console tests need Debian's chromium and chromium-driver: `apt-get install chromium chromium-driver`"
    );
    eprintln!("installing chromium and chromium-driver (once)");
    let ok = |args: &[&str]| {
        Command::new("apt-get").args(args).env("DEBIAN_FRONTEND", "noninteractive").status().map(|s| s.success()).unwrap_or(false)
    };
    assert!(
        ok(&["update", "-qq"]) && ok(&["install", "-y", "-qq", "chromium", "chromium-driver"]),
        "apt-get install chromium chromium-driver failed"
    );
}

/// chromedriver on a free loopback port; killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start() -> Driver {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let up = || ureq::get(format!("{url}/status")).call().map(|r| r.status() == 200).unwrap_or(false);
        while !up() {
            assert!(Instant::now() < deadline, "chromedriver did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        Driver { child, url }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"binary": CHROMIUM, "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,800"]}),
    );
    ClientBuilder::native().capabilities(caps).connect(&driver.url).await.expect("a browser session")
}

fn shots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    std::fs::write(shots().join(format!("{name}.png")), png).unwrap();
}

async fn sign_in(c: &Client, base: &str, token: &str) {
    c.goto(&format!("{base}/console")).await.unwrap();
    c.wait().for_element(Locator::Css("#token")).await.unwrap().send_keys(token).await.unwrap();
    c.find(Locator::Css("#sign-in-form button")).await.unwrap().click().await.unwrap();
    c.wait().for_element(Locator::Css("#nav a")).await.expect("signed in: the navigation shows");
}

/// Wait until `css` matches an element whose text contains `text`; returns that text.
async fn wait_text(c: &Client, css: &str, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(elements) = c.find_all(Locator::Css(css)).await {
            for e in elements {
                if let Ok(t) = e.text().await
                    && t.contains(text)
                {
                    return t;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no {css} containing {text:?}; page: {}",
            c.source().await.unwrap_or_default().chars().take(3000).collect::<String>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn no_horizontal_scroll(c: &Client) -> bool {
    let v: Value = c.execute("return document.documentElement.scrollWidth <= window.innerWidth + 1;", vec![]).await.unwrap();
    v.as_bool().unwrap_or(false)
}

#[test]
fn a_request_approved_in_the_console_is_queried_and_audited() {
    ensure_browser();
    let fx = warehouse(300);
    let steward = user(&fx.data, "sue", "steward");
    let alice = user(&fx.data, "alice", "researcher");
    let s = Server::start(&fx.data, &[]);
    let driver = Driver::start();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        // A researcher signs in and requests a project.
        let c = browser(&driver).await;
        sign_in(&c, &s.url, &alice).await;
        c.goto(&format!("{}/console#/request", s.url)).await.unwrap();
        c.wait().for_element(Locator::Css("#request-form")).await.unwrap();
        c.find(Locator::Css("#req-title")).await.unwrap().send_keys("Console study").await.unwrap();
        c.find(Locator::Css("#req-purpose")).await.unwrap().send_keys("Protocol 7: patients by sex, from the console").await.unwrap();
        for t in ["person", "condition_occurrence"] {
            c.find(Locator::Css(&format!("input[name=tables][value={t}]"))).await.unwrap().click().await.unwrap();
        }
        let eps = c.find(Locator::Css("#req-epsilon")).await.unwrap();
        eps.clear().await.unwrap();
        eps.send_keys("2").await.unwrap();
        shot(&c, "1-researcher-request-form").await;
        c.find(Locator::Css("#request-form button[type=submit]")).await.unwrap().click().await.unwrap();
        wait_text(&c, "#alert", "a steward will decide").await;
        wait_text(&c, "tr[data-project=console-study]", "pending").await;
        shot(&c, "2-researcher-pending").await;

        // A bad request is refused by the API, and the console says why in words.
        c.goto(&format!("{}/console#/request", s.url)).await.unwrap();
        c.wait().for_element(Locator::Css("#request-form")).await.unwrap();
        c.find(Locator::Css("#req-title")).await.unwrap().send_keys("No tables").await.unwrap();
        c.find(Locator::Css("#req-purpose")).await.unwrap().send_keys("x").await.unwrap();
        c.find(Locator::Css("#request-form button[type=submit]")).await.unwrap().click().await.unwrap();
        let msg = wait_text(&c, "#alert", "400").await;
        assert!(msg.contains("at least one table"), "{msg}");
        c.close().await.unwrap();

        // The steward sees the pending request, grants less ε, and approves.
        let c = browser(&driver).await;
        sign_in(&c, &s.url, &steward).await;
        wait_text(&c, "article[data-project=console-study]", "Protocol 7").await;
        let eps = c.find(Locator::Css("article[data-project=console-study] input[name=epsilon]")).await.unwrap();
        eps.clear().await.unwrap();
        eps.send_keys("1.5").await.unwrap();
        shot(&c, "3-steward-pending").await;
        c.find(Locator::Css("article[data-project=console-study] button[data-action=approve]")).await.unwrap().click().await.unwrap();
        wait_text(&c, "#alert", "Approved").await;

        // The researcher's query over the API now succeeds.
        let projects = call("GET", &format!("{}/v1/projects", s.url), Some(&alice), None, None).json();
        let p = projects.as_array().unwrap().iter().find(|p| p["name"] == "console-study").unwrap().clone();
        assert_eq!((p["status"].as_str(), p["epsilon"].as_f64()), (Some("active"), Some(1.5)));
        let body = json!({"sql": "SELECT gender_concept_id, COUNT(*) FROM person GROUP BY 1", "epsilon": 0.5});
        let r = call("POST", &format!("{}/v1/projects/{}/queries", s.url, p["id"]), Some(&alice), Some(&body), None);
        assert_eq!(r.status, 200);

        // The burn-down reflects the spend; the per-patient cap is shown.
        c.goto(&format!("{}/console#/projects", s.url)).await.unwrap();
        let row = wait_text(&c, "tr[data-project=console-study]", "active").await;
        assert!(row.contains("0.5") && row.contains("1.5"), "{row}");
        c.wait().for_element(Locator::Css("#burn-down path[data-project=console-study]")).await.expect("a burn-down line");
        let legend = wait_text(&c, "#burn-down li", "Console study").await;
        assert!(legend.contains("ε 0.5 spent of 1.5"), "{legend}");
        wait_text(&c, "#warehouse-cap", "0.5").await;
        shot(&c, "4-steward-projects-burn-down").await;

        // The audit page lists every step, with a verified chain.
        c.goto(&format!("{}/console#/audit?project=console-study", s.url)).await.unwrap();
        let status = wait_text(&c, "#chain-status", "verified").await;
        assert!(status.contains("Audit chain verified"), "{status}");
        for action in ["project.requested", "project.approved", "query.submitted", "query.answered"] {
            wait_text(&c, "#audit-table tbody", action).await;
        }
        let failed_filter = c.find_all(Locator::Css("#audit-table tbody tr")).await.unwrap().len();
        assert!(failed_filter >= 4);
        shot(&c, "5-steward-audit").await;
        c.goto(&format!("{}/console#/catalog", s.url)).await.unwrap();
        wait_text(&c, "#ingests", "person").await;
        assert!(no_horizontal_scroll(&c).await, "the catalog fits 1280 px");
        shot(&c, "6-steward-catalog").await;

        // A narrow window: still usable, nothing overflows sideways.
        c.set_window_size(400, 800).await.unwrap();
        c.goto(&format!("{}/console#/projects", s.url)).await.unwrap();
        wait_text(&c, "tr[data-project=console-study]", "active").await;
        assert!(no_horizontal_scroll(&c).await, "the projects page fits a narrow window");
        shot(&c, "7-steward-projects-narrow").await;
        c.goto(&format!("{}/console#/audit", s.url)).await.unwrap();
        wait_text(&c, "#chain-status", "verified").await;
        assert!(no_horizontal_scroll(&c).await, "the audit page fits a narrow window");
        shot(&c, "8-steward-audit-narrow").await;

        // Suspending from the console takes effect on the API at once.
        c.set_window_size(1280, 800).await.unwrap();
        c.goto(&format!("{}/console#/projects", s.url)).await.unwrap();
        c.wait()
            .for_element(Locator::Css("tr[data-project=console-study] button[data-action=suspend]"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_text(&c, "tr[data-project=console-study]", "suspended").await;
        let r = call("POST", &format!("{}/v1/projects/{}/queries", s.url, p["id"]), Some(&alice), Some(&body), None);
        assert_eq!(r.status, 409);
        c.close().await.unwrap();

        // The researcher never sees other projects, and sees their own query history.
        let c = browser(&driver).await;
        sign_in(&c, &s.url, &alice).await;
        let history = wait_text(&c, "main", "Query history").await;
        assert!(history.contains("SELECT gender_concept_id"), "{history}");
        assert!(c.find_all(Locator::Css("#ingests, #warehouse-cap")).await.unwrap().is_empty(), "no steward panels for researchers");
        c.close().await.unwrap();
    });
    eprintln!("console screenshots: {}", shots().display());
}

#[test]
fn the_console_is_embedded_and_locked_down() {
    let fx = warehouse(20);
    let s = Server::start(&fx.data, &[]);
    let page = call("GET", &format!("{}/console", s.url), None, None, None);
    assert_eq!(page.status, 200);
    for asset in ["/console/console.js", "/console/console.css"] {
        assert_eq!(call("GET", &format!("{}{asset}", s.url), None, None, None).status, 200, "{asset}");
    }
    let html = String::from_utf8_lossy(&page.body);
    assert!(!html.contains("http://") && !html.contains("https://"), "nothing is fetched from outside the warehouse");
    let js = String::from_utf8_lossy(&call("GET", &format!("{}/console/console.js", s.url), None, None, None).body).to_string();
    assert!(!js.contains("innerHTML"), "the console renders text nodes only");
}
