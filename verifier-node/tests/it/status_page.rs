//! The validator's status page in a real browser: four `verifier-node` processes run a market
//! with three devices to Final; headless Chromium (Debian's package, installed by `.ci/run`)
//! loads `http://<validator>/`, runs its script against the JSON API, and must show the
//! committed height, the residual curve and the load chart; a screenshot must be a real
//! rendering. The page loads nothing from outside the validator.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::cluster::*;

fn chromium() -> &'static str {
    for p in ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"] {
        if Path::new(p).exists() {
            return p;
        }
    }
    panic!("headless Chromium is needed: apt-get install chromium (.ci/run does)");
}

/// Chromium as the environment allows it in a sandboxed, offline CI: no sandbox (root), no
/// GPU, no background networking, a fresh profile.
fn headless(profile: &Path, args: &[&str], url: &str) -> std::process::Output {
    Command::new(chromium())
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking"])
        .args(["--disable-component-update", "--disable-sync", "--virtual-time-budget=8000"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("chromium runs")
}

#[test]
fn the_status_page_renders_the_market_in_headless_chromium() {
    let c = Cluster::init("page", 4, 4, 4, 1500, 3);
    c.start_all();
    let devices: Vec<Device> = (0..3).map(Device::new).collect();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(run_devices(&c, &devices, 0, Duration::from_secs(60)));
    c.wait_final(Duration::from_secs(20));
    let html = c.get(0, "/").unwrap();
    assert!(html.contains("<svg") && html.contains("/markets/"), "{html}");
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http"), "the page loads nothing from outside");
    let status: serde_json::Value = serde_json::from_str(&c.get(0, "/status").unwrap()).unwrap();
    let height = status["height"].as_u64().unwrap();

    let url = format!("http://{}/", c.http(0));
    let profile = c.dir.join("chromium-profile");
    let dom = headless(&profile, &["--dump-dom"], &url);
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(dom.contains("data-loaded=\"true\""), "the script ran and loaded the API: {dom}");
    assert!(dom.contains(&format!("id=\"height\">{height}<")), "committed height {height} shown: {dom}");
    assert!(dom.contains("id=\"phase\">final<"), "{dom}");
    // The markets table lists the chain's one market, final, with its three devices.
    let markets = &dom[dom.find("id=\"markets\"").unwrap()..];
    let markets = &markets[..markets.find("</tbody>").unwrap()];
    assert_eq!(markets.matches("<tr").count(), 1, "{markets}");
    let api: serde_json::Value = serde_json::from_str(&c.get(0, "/markets").unwrap()).unwrap();
    let m = &api["markets"][0];
    assert_eq!(m["enrolled"], 3);
    let cells = format!("<td>{}</td><td>{T}</td>", m["market_id"]);
    let tail = format!("<td>3</td><td>{}</td><td>final</td>", m["iteration"]);
    assert!(markets.contains(&cells) && markets.contains(&tail), "{cells} … {tail} in {markets}");
    assert!(dom.contains("id=\"ledger\">no settled bill yet<"), "the accounts panel read /accounts: {dom}");
    let residuals = &dom[dom.find("id=\"residuals\"").unwrap()..];
    assert!(residuals[..residuals.find("</svg>").unwrap()].contains("<polyline"), "a residual curve is drawn");
    // Readable axes: W on the residuals, kW and the hours of the day on the load.
    let residual_svg = &residuals[..residuals.find("</svg>").unwrap()];
    assert!(residual_svg.contains(" W</text>") && residual_svg.contains("iteration "), "{residual_svg}");
    let load = &dom[dom.find("id=\"load\"").unwrap()..];
    let load_svg = &load[..load.find("</svg>").unwrap()];
    assert!(load_svg.contains(" kW</text>") && load_svg.contains("12:00</text>"), "{load_svg}");
    assert_eq!(load[..load.find("</svg>").unwrap()].matches("<rect").count(), T, "one load bar per slot");

    let png = c.dir.join("status.png");
    let shot = headless(&profile, &[&format!("--screenshot={}", png.display()), "--window-size=1200,1000", "--hide-scrollbars"], &url);
    assert!(png.exists(), "no screenshot: {}", String::from_utf8_lossy(&shot.stderr));
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    // A blank 1200×1000 page compresses to a few kB; cards, text and two charts do not.
    assert!(bytes.len() > 20_000, "the screenshot looks empty ({} bytes)", bytes.len());
    c.stop_all();
}
