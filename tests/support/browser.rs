//! A real headless Chromium for the console's end-to-end tests: Debian's `chromium` driven
//! through its `chromedriver` (WebDriver) by fantoccini. Each test starts its own chromedriver
//! on a free port; each [`Browser::window`] is a WebDriver session with a profile of its own
//! (its own cookies), which is what a second device is to the service.
//!
//! `FINSEC_CHROMIUM` and `FINSEC_CHROMEDRIVER` name other binaries. When either is missing
//! the test fails and says what to install: it never skips.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

pub struct Browser {
    driver: Child,
    url: String,
    chromium: String,
}

fn binary(variable: &str, default: &str) -> String {
    let path = std::env::var(variable).unwrap_or_else(|_| default.to_owned());
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} is not installed: the console's browser tests need Debian's chromium and \
         chromium-driver (apt-get install -y chromium chromium-driver; scripts/test installs \
         them when it may), or {variable} naming another binary"
    );
    path
}

impl Browser {
    pub async fn start() -> Self {
        let chromium = binary("FINSEC_CHROMIUM", "/usr/bin/chromium");
        let chromedriver = binary("FINSEC_CHROMEDRIVER", "/usr/bin/chromedriver");
        let port = super::free_port();
        // Owned from the start: however this ends, dropping it stops the driver.
        let browser = Self {
            driver: Command::new(chromedriver)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("chromedriver starts"),
            url: format!("http://127.0.0.1:{port}"),
            chromium,
        };
        let status = format!("{}/status", browser.url);
        for _ in 0..100 {
            if reqwest::get(&status)
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return browser;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not answer at {status} within 10 s");
    }

    /// A new browser window with its own profile (a device of its own), sending
    /// `user_agent`.
    pub async fn window(&self, user_agent: &str) -> Client {
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": self.chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-default-apps",
                    "--disable-extensions",
                    "--disable-sync",
                    "--no-first-run",
                    "--hide-scrollbars",
                    "--window-size=1280,1000",
                    format!("--user-agent={user_agent}"),
                ],
            }),
        );
        let mut builder =
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
        builder.capabilities(capabilities);
        builder
            .connect(&self.url)
            .await
            .expect("chromium starts under chromedriver")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Its Chromium windows go with it.
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The element, once the page shows it (at most 15 s).
pub async fn shown(window: &Client, css: &str) -> fantoccini::elements::Element {
    let element = window
        .wait()
        .at_most(Duration::from_secs(15))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css} never appeared: {e}"));
    for _ in 0..150 {
        if element.is_displayed().await.unwrap_or(false) {
            return element;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{css} is on the page but never shown");
}

/// Waits until the view (`sign-in`, `account`, …) is the one shown.
pub async fn view(window: &Client, id: &str) {
    shown(window, &format!("#{id}:not([hidden])")).await;
}

/// Types `text` into the field with this id (emptied first).
pub async fn fill(window: &Client, id: &str, text: &str) {
    let field = shown(window, &format!("#{id}")).await;
    field.clear().await.expect("field clears");
    field.send_keys(text).await.expect("typing works");
}

pub async fn click(window: &Client, css: &str) {
    shown(window, css).await.click().await.expect("click works");
}

/// The shown text of the element, once it has some containing `part` (at most 15 s).
pub async fn text_containing(window: &Client, css: &str, part: &str) -> String {
    let mut last = String::new();
    for _ in 0..150 {
        if let Ok(element) = window.find(Locator::Css(css)).await {
            last = element.text().await.unwrap_or_default();
            if last.contains(part) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{css} never said {part:?}; it says {last:?}");
}

/// How many elements match `css` now.
pub async fn count(window: &Client, css: &str) -> usize {
    window
        .find_all(Locator::Css(css))
        .await
        .map(|all| all.len())
        .unwrap_or(0)
}

/// Runs `script` in the page (an async function body; `return` its value).
pub async fn run(window: &Client, script: &str) -> Value {
    window
        .execute(&format!("return (async () => {{ {script} }})();"), vec![])
        .await
        .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
}

/// Saves a screenshot of the window to `target/console-screenshots/<name>.png` and returns
/// its path.
pub async fn screenshot(window: &Client, name: &str) -> PathBuf {
    let png = window.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let folder = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    std::fs::create_dir_all(&folder).expect("screenshot folder");
    let path = folder.join(format!("{name}.png"));
    std::fs::write(&path, png).expect("screenshot written");
    path
}
