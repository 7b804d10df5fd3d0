//! The demo's MQTT side: an embedded rumqttd broker on loopback, and a subscriber that counts
//! what the gateways publish (so the summary can say the schedules were executed).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Starts rumqttd on `127.0.0.1:port` in a thread of its own and waits until it listens.
pub fn start(port: u16) -> Result<(), String> {
    let config = format!(
        "id = 0\n\
         [router]\nid = 0\nmax_connections = 10010\nmax_outgoing_packet_count = 200\nmax_segment_size = 104857600\nmax_segment_count = 10\n\
         [v4.1]\nname = \"v4-1\"\nlisten = \"127.0.0.1:{port}\"\nnext_connection_delay_ms = 1\n\
         [v4.1.connections]\nconnection_timeout_ms = 60000\nmax_payload_size = 20480\nmax_inflight_count = 100\ndynamic_filters = true\n"
    );
    let config: rumqttd::Config = toml::from_str(&config).map_err(|e| format!("broker config: {e}"))?;
    let mut broker = rumqttd::Broker::new(config);
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!("MQTT broker stopped: {e}");
            }
        })
        .map_err(|e| e.to_string())?;
    let until = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > until {
            return Err(format!("the embedded MQTT broker did not listen on 127.0.0.1:{port}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Subscribes to `filter` and counts the messages per topic, from a thread of its own.
pub fn count_topics(port: u16, filter: &'static str) -> Result<Arc<Mutex<BTreeMap<String, u64>>>, String> {
    let counts = Arc::new(Mutex::new(BTreeMap::new()));
    let out = counts.clone();
    let mut opts = rumqttc::MqttOptions::new("demo-observer", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut connection) = rumqttc::Client::new(opts, 1000);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("mqtt-observer".into())
        .spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                        let _ = client.subscribe(filter, rumqttc::QoS::AtLeastOnce);
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        *out.lock().expect("lock").entry(p.topic.clone()).or_insert(0) += 1;
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        })
        .map_err(|e| e.to_string())?;
    ready_rx.recv_timeout(Duration::from_secs(10)).map_err(|_| "the MQTT observer could not subscribe".to_string())?;
    Ok(counts)
}
