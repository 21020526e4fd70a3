//! A headless Chromium driven over WebDriver (Debian's `chromedriver`, by
//! its path) for the console's browser tests.
//!
//! The driver listens on a loopback port and accepts only loopback clients;
//! Chromium runs with background networking, component updates, sync and
//! first-run off, and a host resolver that resolves nothing but loopback, so
//! the browser contacts nothing but the servers the test started.

use anyhow::{Context, bail};
use base64::Engine;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

/// Debian's driver (package `chromium-driver`).
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Debian's browser (package `chromium`).
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// The W3C element reference key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One browser session; the driver and browser end when it is dropped.
#[derive(Debug)]
pub struct Browser {
    driver: Child,
    base: String,
    http: reqwest::Client,
    _profile: tempfile_dir::TempDir,
}

/// A temporary directory removed on drop (the browser's profile).
mod tempfile_dir {
    #[derive(Debug)]
    pub struct TempDir(pub std::path::PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Browser {
    /// Starts the driver and a headless browser of `width` × `height`.
    ///
    /// # Errors
    /// No driver or browser installed (`apt-get install chromium
    /// chromium-driver`), or the session could not start.
    pub async fn start(width: u32, height: u32) -> anyhow::Result<Self> {
        if !Path::new(CHROMEDRIVER).exists() || !Path::new(CHROMIUM).exists() {
            bail!(
                "{CHROMEDRIVER} or {CHROMIUM} is missing: install Debian's packages (apt-get install -y chromium chromium-driver)"
            );
        }
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.local_addr()?.port()
        };
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .arg("--allowed-origins=http://127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting chromedriver")?;
        let profile =
            std::env::temp_dir().join(format!("hookpost-browser-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&profile)?;
        let mut browser = Self {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            // A driver that stops answering fails the test, not hangs it.
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(60))
                .build()?,
            _profile: tempfile_dir::TempDir(profile.clone()),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = browser
                .http
                .get(format!("{}/status", browser.base))
                .send()
                .await
                && r.status().is_success()
            {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                bail!("chromedriver did not answer within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "unhandledPromptBehavior": "ignore",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update",
                    "--no-first-run", "--disable-sync", "--disable-default-apps",
                    "--disable-extensions", "--no-default-browser-check",
                    "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
                    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                    format!("--user-data-dir={}", profile.display()),
                    format!("--window-size={width},{height}"),
                ],
            },
        }}});
        let answer = browser.post_raw("/session", &caps).await?;
        let id = answer["value"]["sessionId"]
            .as_str()
            .with_context(|| format!("no session: {answer}"))?
            .to_owned();
        browser.base = format!("{}/session/{id}", browser.base);
        Ok(browser)
    }

    async fn post_raw(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let base = self.base.split("/session/").next().unwrap_or(&self.base);
        let r = self
            .http
            .post(format!("{base}{path}"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await?;
        Ok(serde_json::from_slice(&r.bytes().await?)?)
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let answer: Value = serde_json::from_slice(&req.send().await?.bytes().await?)?;
        if let Some(error) = answer["value"]["error"].as_str() {
            bail!("webdriver {path}: {error}: {}", answer["value"]["message"]);
        }
        Ok(answer["value"].clone())
    }

    /// Opens `url`.
    ///
    /// # Errors
    /// The driver failed.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.send(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await?;
        Ok(())
    }

    /// The current page's URL.
    ///
    /// # Errors
    /// The driver failed.
    pub async fn url(&self) -> anyhow::Result<String> {
        Ok(self
            .send(reqwest::Method::GET, "/url", None)
            .await?
            .as_str()
            .unwrap_or("")
            .to_owned())
    }

    /// The element `css` selects (the first).
    ///
    /// # Errors
    /// None matches.
    pub async fn find(&self, css: &str) -> anyhow::Result<String> {
        let v = self
            .send(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await
            .with_context(|| format!("finding {css}"))?;
        v[ELEMENT]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("finding {css}: the driver answered {v}"))
    }

    /// How many elements `css` selects.
    ///
    /// # Errors
    /// The driver failed.
    pub async fn count(&self, css: &str) -> anyhow::Result<usize> {
        let v = self
            .send(
                reqwest::Method::POST,
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await?;
        Ok(v.as_array().map_or(0, Vec::len))
    }

    /// Types `text` into the element `css` selects.
    ///
    /// # Errors
    /// No such element, or the driver failed.
    pub async fn fill(&self, css: &str, text: &str) -> anyhow::Result<()> {
        let el = self.find(css).await?;
        self.send(
            reqwest::Method::POST,
            &format!("/element/{el}/clear"),
            Some(json!({})),
        )
        .await?;
        self.send(
            reqwest::Method::POST,
            &format!("/element/{el}/value"),
            Some(json!({"text": text})),
        )
        .await?;
        Ok(())
    }

    /// Clicks the element `css` selects.
    ///
    /// # Errors
    /// No such element, or the driver failed.
    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        let el = self.find(css).await?;
        self.send(
            reqwest::Method::POST,
            &format!("/element/{el}/click"),
            Some(json!({})),
        )
        .await?;
        Ok(())
    }

    /// Clicks the element `css` selects (a submit button or a link) and
    /// waits, up to 30 s, until the next page has loaded.
    ///
    /// # Errors
    /// No such element, the driver failed, or no new page loaded in time.
    pub async fn submit(&self, css: &str) -> anyhow::Result<()> {
        // A mark on this page's window: a new page has a new window object.
        self.execute("window.__hookpostOld = true;").await?;
        self.click(css).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let loaded = self
                .execute(
                    "return window.__hookpostOld !== true && document.readyState === 'complete';",
                )
                .await
                .unwrap_or(Value::Bool(false));
            if loaded == Value::Bool(true) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("clicking {css}: no new page within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The visible text of the element `css` selects.
    ///
    /// # Errors
    /// No such element, or the driver failed.
    pub async fn text(&self, css: &str) -> anyhow::Result<String> {
        let el = self.find(css).await?;
        Ok(self
            .send(reqwest::Method::GET, &format!("/element/{el}/text"), None)
            .await?
            .as_str()
            .unwrap_or("")
            .to_owned())
    }

    /// Runs `script` (a function body) in the page and returns its value.
    ///
    /// # Errors
    /// The script threw, or the driver failed.
    pub async fn execute(&self, script: &str) -> anyhow::Result<Value> {
        self.send(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// The text of an open `alert`, `confirm` or `prompt`, if one is open.
    ///
    /// # Errors
    /// The driver failed.
    pub async fn alert_text(&self) -> anyhow::Result<Option<String>> {
        let r = self
            .http
            .get(format!("{}/alert/text", self.base))
            .send()
            .await?;
        let v: Value = serde_json::from_slice(&r.bytes().await?)?;
        Ok(match v["value"]["error"].as_str() {
            Some("no such alert") => None,
            Some(e) => bail!("webdriver alert: {e}"),
            None => Some(v["value"].as_str().unwrap_or("").to_owned()),
        })
    }

    /// The value of the page's cookie `name` (`HttpOnly` ones too).
    ///
    /// # Errors
    /// No such cookie, or the driver failed.
    pub async fn cookie(&self, name: &str) -> anyhow::Result<String> {
        let v = self
            .send(reqwest::Method::GET, &format!("/cookie/{name}"), None)
            .await?;
        Ok(v["value"].as_str().unwrap_or("").to_owned())
    }

    /// Resizes the window.
    ///
    /// # Errors
    /// The driver failed.
    pub async fn resize(&self, width: u32, height: u32) -> anyhow::Result<()> {
        self.send(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await?;
        Ok(())
    }

    /// Saves a PNG of the page to `dir/name.png`.
    ///
    /// # Errors
    /// The driver failed, or the file could not be written.
    pub async fn screenshot(&self, dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
        let b64 = self.send(reqwest::Method::GET, "/screenshot", None).await?;
        let png = base64::engine::general_purpose::STANDARD.decode(b64.as_str().unwrap_or(""))?;
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png)?;
        Ok(path)
    }

    /// Ends the session and the driver.
    pub async fn quit(mut self) {
        let _ = self.http.delete(&self.base).send().await;
        let _ = self.driver.kill().await;
    }
}
