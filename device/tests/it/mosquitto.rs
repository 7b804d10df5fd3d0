//! A real MQTT broker for tests: Debian's mosquitto on a port of the test's own. Shared by the
//! device and verifier-node test binaries (the latter includes this file by path).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A mosquitto broker on a port of the test's own; killed on drop.
pub struct Mosquitto {
    child: Child,
}

fn mosquitto_bin() -> PathBuf {
    for p in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto", "/usr/local/sbin/mosquitto"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    "mosquitto".into()
}

impl Mosquitto {
    /// Starts `mosquitto -p <port>` and waits until it listens.
    pub fn start(port: u16) -> Mosquitto {
        let child = Command::new(mosquitto_bin())
            .args(["-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is installed (apt-get install mosquitto; .ci/run does)");
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < until, "mosquitto did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Mosquitto { child }
    }

    /// Stops the broker.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Two meters publishing on the broker every 100 ms until stopped: `power_topic` carries a
/// constant power in W, and the Shelly Gen2 `shelly_id`'s switch 0 status an `aenergy.total`
/// counter (Wh, from `counter_from_wh`) climbing at `counter_w`.
pub struct Meters {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Meters {
    /// Starts publishing to the broker on `port`.
    pub fn start(port: u16, power_topic: &str, power_w: u32, shelly_id: &str, counter_w: f64, counter_from_wh: f64) -> Meters {
        let stop = Arc::new(AtomicBool::new(false));
        let (power_topic, shelly_topic) = (power_topic.to_string(), format!("{shelly_id}/status/switch:0"));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut opts = rumqttc::MqttOptions::new(format!("meters-{}", std::process::id()), "127.0.0.1", port);
            opts.set_keep_alive(Duration::from_secs(5));
            let (client, mut conn) = rumqttc::Client::new(opts, 100);
            std::thread::spawn(move || for _ in conn.iter() {});
            let t0 = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                let wh = counter_w * t0.elapsed().as_secs_f64() / 3600.0 + counter_from_wh;
                let _ = client.publish(power_topic.as_str(), rumqttc::QoS::AtMostOnce, false, power_w.to_string());
                let status = format!("{{\"id\":0,\"apower\":{counter_w:.1},\"aenergy\":{{\"total\":{wh:.6}}}}}");
                let _ = client.publish(shelly_topic.as_str(), rumqttc::QoS::AtMostOnce, false, status);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Meters { stop, thread: Some(thread) }
    }

    /// Stops publishing.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("the meter publisher");
        }
    }
}

impl Drop for Meters {
    fn drop(&mut self) {
        self.stop();
    }
}

