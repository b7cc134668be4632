//! A small W3C WebDriver client for driving Debian's headless Chromium through chromedriver:
//! just the commands the dashboard test needs, over plain HTTP to chromedriver on 127.0.0.1.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The key W3C WebDriver uses for an element reference in JSON.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A chromedriver process on a free loopback port. Dropping it closes every browser it opened
/// (even when a test panics) and stops it.
pub struct Driver {
    child: Child,
    port: String,
    base: String,
    http: reqwest::Client,
    sessions: std::sync::Mutex<Vec<String>>,
}

/// One browser session; `Driver`'s drop closes its browser.
pub struct Session {
    base: String,
    http: reqwest::Client,
}

pub type Element = String;

impl Driver {
    /// Start chromedriver. Panics with what to install when Chromium or chromedriver is missing:
    /// the browser test must not pass by skipping.
    pub fn start() -> Driver {
        for program in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(program).exists(),
                "{program} is missing: install Debian's chromium and chromium-driver packages \
                 (`.ci/run` does) to run the browser test"
            );
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::new();
        let mut child = Command::new(CHROMEDRIVER)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            let line = lines
                .next()
                .expect("chromedriver exited before it started")
                .expect("chromedriver output");
            if let Some(rest) = line.split("started successfully on port ").nth(1) {
                break rest.trim_end_matches('.').trim().to_string();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Driver {
            child,
            base: format!("http://127.0.0.1:{port}"),
            port,
            http,
            sessions: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// A headless Chromium session that accepts the federation's own CA-signed certificate,
    /// records every console message, and saves downloads into `downloads`.
    pub async fn session(&self, downloads: &Path, profile: &Path) -> Session {
        // The flags keep Chromium off the network it cannot reach here (no background services,
        // no component updates), so the only requests it makes are the page's own.
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,2000",
            &format!("--user-data-dir={}", profile.display()),
        ];
        let caps = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "acceptInsecureCerts": true,
                "goog:loggingPrefs": { "browser": "ALL" },
                "goog:chromeOptions": {
                    "binary": CHROMIUM,
                    "args": args,
                    "prefs": {
                        "download.default_directory": downloads.to_str().expect("utf8 path"),
                        "download.prompt_for_download": false,
                    },
                },
            }}
        });
        let answer = post(&self.http, format!("{}/session", self.base), caps).await;
        let id = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {answer}"))
            .to_string();
        if let Ok(mut open) = self.sessions.lock() {
            open.push(id.clone());
        }
        Session {
            base: format!("{}/session/{id}", self.base),
            http: self.http.clone(),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // A plain blocking DELETE per session: Drop cannot await, and a browser left running
        // would outlive the test.
        let open = self.sessions.lock().map(|s| s.clone()).unwrap_or_default();
        for id in open {
            if let Ok(mut stream) = std::net::TcpStream::connect(format!("127.0.0.1:{}", self.port))
            {
                use std::io::{Read, Write};
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let _ = write!(
                    stream,
                    "DELETE /session/{id} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                );
                let _ = stream.read_to_end(&mut Vec::new());
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn post(http: &reqwest::Client, url: String, body: Value) -> Value {
    send(http.post(&url).json(&body), "POST", &url).await
}

async fn get(http: &reqwest::Client, url: String) -> Value {
    send(http.get(&url), "GET", &url).await
}

async fn send(request: reqwest::RequestBuilder, method: &str, url: &str) -> Value {
    let answer: Value = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
        .json()
        .await
        .expect("json");
    check(url, answer)
}

fn check(url: &str, answer: Value) -> Value {
    if let Some(error) = answer["value"].get("error") {
        panic!("{url}: {error}: {}", answer["value"]["message"]);
    }
    answer
}

impl Session {
    pub async fn goto(&self, url: &str) {
        post(
            &self.http,
            format!("{}/url", self.base),
            json!({ "url": url }),
        )
        .await;
    }

    pub async fn find_all(&self, css: &str) -> Vec<Element> {
        let answer = post(
            &self.http,
            format!("{}/elements", self.base),
            json!({ "using": "css selector", "value": css }),
        )
        .await;
        element_ids(&answer["value"])
    }

    /// The page's current HTML, for failure messages.
    pub async fn source(&self) -> String {
        let answer = get(&self.http, format!("{}/source", self.base)).await;
        answer["value"].as_str().unwrap_or_default().to_string()
    }

    pub async fn find(&self, css: &str) -> Element {
        let all = self.find_all(css).await;
        if all.len() != 1 {
            let raw = post(
                &self.http,
                format!("{}/elements", self.base),
                json!({ "using": "css selector", "value": css }),
            )
            .await;
            panic!(
                "expected one element for {css}, found {}: {raw}\n{}",
                all.len(),
                self.source().await
            );
        }
        all.into_iter().next().expect("one element")
    }

    pub async fn find_within(&self, parent: &Element, css: &str) -> Vec<Element> {
        let answer = post(
            &self.http,
            format!("{}/element/{parent}/elements", self.base),
            json!({ "using": "css selector", "value": css }),
        )
        .await;
        element_ids(&answer["value"])
    }

    pub async fn text(&self, element: &Element) -> String {
        let answer = get(&self.http, format!("{}/element/{element}/text", self.base)).await;
        answer["value"].as_str().unwrap_or_default().to_string()
    }

    pub async fn attribute(&self, element: &Element, name: &str) -> Option<String> {
        let answer = get(
            &self.http,
            format!("{}/element/{element}/attribute/{name}", self.base),
        )
        .await;
        answer["value"].as_str().map(String::from)
    }

    pub async fn displayed(&self, element: &Element) -> bool {
        let answer = get(
            &self.http,
            format!("{}/element/{element}/displayed", self.base),
        )
        .await;
        answer["value"].as_bool().unwrap_or(false)
    }

    /// Width and height in CSS pixels.
    pub async fn size(&self, element: &Element) -> (f64, f64) {
        let answer = get(&self.http, format!("{}/element/{element}/rect", self.base)).await;
        (
            answer["value"]["width"].as_f64().unwrap_or(0.0),
            answer["value"]["height"].as_f64().unwrap_or(0.0),
        )
    }

    pub async fn click(&self, element: &Element) {
        post(
            &self.http,
            format!("{}/element/{element}/click", self.base),
            json!({}),
        )
        .await;
    }

    /// Press and release one key (a WebDriver key code such as TAB = "\u{E004}").
    pub async fn press(&self, key: &str) {
        let actions = json!({ "actions": [{
            "type": "key", "id": "keyboard",
            "actions": [{ "type": "keyDown", "value": key }, { "type": "keyUp", "value": key }],
        }]});
        post(&self.http, format!("{}/actions", self.base), actions).await;
    }

    pub async fn active(&self) -> Element {
        let answer = get(&self.http, format!("{}/element/active", self.base)).await;
        answer["value"][ELEMENT_KEY]
            .as_str()
            .expect("active element")
            .to_string()
    }

    /// Console messages since the last call: (level, message).
    pub async fn console(&self) -> Vec<(String, String)> {
        let answer = post(
            &self.http,
            format!("{}/se/log", self.base),
            json!({ "type": "browser" }),
        )
        .await;
        answer["value"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                (
                    e["level"].as_str().unwrap_or_default().to_string(),
                    e["message"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine as _;
        let answer = get(&self.http, format!("{}/screenshot", self.base)).await;
        base64::engine::general_purpose::STANDARD
            .decode(answer["value"].as_str().expect("base64 screenshot"))
            .expect("screenshot is base64")
    }
}

fn element_ids(value: &Value) -> Vec<Element> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e[ELEMENT_KEY].as_str().map(String::from))
        .collect()
}
