//! What every MQTT session of Continuum's sets on its TCP connection.

/// The network settings of a Continuum MQTT session: Nagle's algorithm off
/// (publishes and acknowledgements are small writes, each of which it would
/// hold behind the last unacknowledged segment until the peer's delayed ACK)
/// and a deadline for the TCP connect.
pub fn network_options(connect_timeout_secs: u64) -> rumqttc::NetworkOptions {
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    network.set_connection_timeout(connect_timeout_secs);
    network
}
