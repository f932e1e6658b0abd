//! The metrics a behavior can name, and which of them the device can measure.

/// A metric defender-edge measures itself or receives from a plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Metric {
    ListeningTcpPorts,
    NumListeningTcpPorts,
    ListeningUdpPorts,
    NumListeningUdpPorts,
    NumEstablishedTcpConnections,
    DestinationIpAddresses,
    BytesIn,
    BytesOut,
    PacketsIn,
    PacketsOut,
    /// A custom metric, by the name plugins put in `sample.custom_metrics`.
    Custom(String),
}

/// What a metric's datapoints look like, which decides the operators and
/// value keys a behavior may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// A number judged as it is each sample (counts, custom numbers).
    Gauge,
    /// Traffic: a delta per sample, summed over `durationSeconds`.
    Traffic,
    /// A port list.
    Ports,
    /// An address list.
    Addresses,
    /// A custom metric whose type the operator and value decide.
    Custom,
}

/// How a behavior's `metric` is treated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Classified {
    Device(Metric),
    /// Measured by AWS IoT (messages, authorization failures...): only the
    /// cloud sees it.
    CloudSide,
}

/// Cloud-side metrics of Device Defender Detect.
const CLOUD_SIDE: [&str; 8] = [
    "aws:num-messages-sent",
    "aws:num-messages-received",
    "aws:num-authorization-failures",
    "aws:source-ip-address",
    "aws:num-connection-attempts",
    "aws:num-disconnects",
    "aws:disconnect-duration",
    "aws:message-byte-size",
];

impl Metric {
    pub(crate) fn shape(&self) -> Shape {
        match self {
            Metric::ListeningTcpPorts | Metric::ListeningUdpPorts => Shape::Ports,
            Metric::NumListeningTcpPorts
            | Metric::NumListeningUdpPorts
            | Metric::NumEstablishedTcpConnections => Shape::Gauge,
            Metric::DestinationIpAddresses => Shape::Addresses,
            Metric::BytesIn | Metric::BytesOut | Metric::PacketsIn | Metric::PacketsOut => {
                Shape::Traffic
            }
            Metric::Custom(_) => Shape::Custom,
        }
    }

    /// Whether the metric comes from a plugin (judged after plugins ran).
    pub(crate) fn is_custom(&self) -> bool {
        matches!(self, Metric::Custom(_))
    }
}

/// Sorts a behavior's `metric` into device-side, cloud-side or invalid.
/// An `aws:` name that is neither is refused: a typo must not silently turn
/// a behavior off.
pub(crate) fn classify(name: &str) -> Result<Classified, String> {
    let metric = match name {
        "aws:listening-tcp-ports" => Metric::ListeningTcpPorts,
        "aws:num-listening-tcp-ports" => Metric::NumListeningTcpPorts,
        "aws:listening-udp-ports" => Metric::ListeningUdpPorts,
        "aws:num-listening-udp-ports" => Metric::NumListeningUdpPorts,
        "aws:num-established-tcp-connections" => Metric::NumEstablishedTcpConnections,
        "aws:destination-ip-addresses" => Metric::DestinationIpAddresses,
        "aws:all-bytes-in" => Metric::BytesIn,
        "aws:all-bytes-out" => Metric::BytesOut,
        "aws:all-packets-in" => Metric::PacketsIn,
        "aws:all-packets-out" => Metric::PacketsOut,
        cloud if CLOUD_SIDE.contains(&cloud) => return Ok(Classified::CloudSide),
        other if other.starts_with("aws:") => {
            return Err(format!("unknown Device Defender metric `{other}`"));
        }
        custom => {
            if !is_valid_name(custom) {
                return Err(format!(
                    "`{custom}` is not a valid custom metric name (1-128 characters of a-z A-Z 0-9 : _ -)"
                ));
            }
            Metric::Custom(custom.to_owned())
        }
    };
    Ok(Classified::Device(metric))
}

/// Device Defender's name rule for profiles, behaviors and custom metrics:
/// 1 to 128 characters from `[a-zA-Z0-9:_-]`.
pub(crate) fn is_valid_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-'))
}
