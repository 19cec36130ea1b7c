//! How vm-agent is configured and started, as agreed between the programs that start it
//! (control's local provider, the tests) and vm-agent itself, which in turn starts cloudflared.

/// The environment variable vm-agent, and cloudflared after it, read a tunnel token from.
pub const TUNNEL_TOKEN_ENV: &str = "TUNNEL_TOKEN";

/// Variables of a supervisor's own environment that no child it starts may inherit: systemd's
/// notify socket and watchdog (systemd would take the child's messages for the supervisor's),
/// and the tunnel token (a child is handed its own token explicitly, never the supervisor's by
/// accident). Control strips them from local VMs' vm-agents, vm-agent from cloudflared.
pub const SUPERVISOR_ONLY_ENV: [&str; 4] = [
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    TUNNEL_TOKEN_ENV,
];
