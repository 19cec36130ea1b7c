//! The footprint benchmark's floor: the least a heartbeating agent could be. A tokio
//! current-thread runtime and a reqwest client on rustls (ring), like vm-agent, posting the
//! same heartbeat document every second, and nothing else.
//!
//! `heartbeat_floor CONTROL_URL CREDENTIAL`

use std::time::Duration;

use control_api::agent::{
    HEARTBEAT_PATH, Heartbeat, HeartbeatAck, HostMetrics, SliceReport, SliceState, TunnelReport,
    TunnelState,
};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(control), Some(credential)) = (args.next(), args.next()) else {
        eprintln!("usage: heartbeat_floor CONTROL_URL CREDENTIAL");
        std::process::exit(2);
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Ok(client) = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    else {
        eprintln!("heartbeat_floor: cannot build the HTTP client");
        std::process::exit(1);
    };
    let mut beat = Heartbeat {
        agent_id: None,
        boot_id: "00000000-0000-0000-0000-000000000000".to_owned(),
        sequence: 0,
        agent_version: "floor".to_owned(),
        image_version: "floor".to_owned(),
        agent_uptime_s: 0,
        cloudflared: TunnelReport {
            state: TunnelState::Ready,
            ready_connections: 4,
            restarts: 0,
            crash_loop: false,
            last_exit: None,
            since: None,
        },
        slice: SliceReport {
            state: SliceState::Mounted,
            free_bytes: Some(1),
            total_bytes: Some(1),
            free_inodes: Some(1),
            total_inodes: Some(1),
        },
        host: HostMetrics {
            cpus: 1,
            load_centi: [0; 3],
            memory_total_bytes: 1,
            memory_available_bytes: 1,
            root_free_bytes: 1,
            uptime_s: 0,
        },
        clone: None,
    };
    let url = format!("{control}{HEARTBEAT_PATH}");
    loop {
        beat.sequence += 1;
        let interval = match client
            .post(&url)
            .bearer_auth(&credential)
            .json(&beat)
            .send()
            .await
        {
            Ok(response) => response
                .json::<HeartbeatAck>()
                .await
                .map_or(1, |ack| ack.heartbeat_interval_s),
            Err(_) => 1,
        };
        tokio::time::sleep(Duration::from_secs(u64::from(interval))).await;
    }
}
