//! Rates: the difference of two readings of the counters over the time measured between them
//! (not averages since load). A counter that went down was reset (the instance was unloaded
//! and loaded again between the readings): its new value is what it counted since.

use port_demux_common::outcome;

use crate::{Action, PortStat, Proto, Stats, Totals};

/// One port's counters and their rates over an interval; as JSON `{"proto", "port", "action",
/// "packets", "bytes", "new_packets", "new_bytes", "packets_per_s", "bits_per_s"}`.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct PortRate {
    /// Protocol.
    pub proto: Proto,
    /// Destination port.
    pub port: u16,
    /// The binding now, if bound.
    pub action: Option<Action>,
    /// Frames since load.
    pub packets: u64,
    /// Bytes since load.
    pub bytes: u64,
    /// Frames counted in the interval.
    pub new_packets: u64,
    /// Bytes counted in the interval.
    pub new_bytes: u64,
    /// `new_packets` per second.
    pub packets_per_s: f64,
    /// `new_bytes` times 8 per second.
    pub bits_per_s: f64,
}

/// Rates of the totals; as JSON `{"packets_per_s", "bits_per_s", "outcomes_per_s": {NAME:
/// rate, ...}, "redirected_per_s", "fallback_per_s"}`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TotalRates {
    /// Every frame the program saw, per second.
    pub packets_per_s: f64,
    /// Bits of the demultiplexed frames per second.
    pub bits_per_s: f64,
    /// Frames per outcome per second, indexed like [`outcome::NAMES`].
    pub outcomes_per_s: [f64; outcome::COUNT],
    /// Redirected frames per second.
    pub redirected_per_s: f64,
    /// Frames passed for want of a redirect target, per second.
    pub fallback_per_s: f64,
}

#[cfg(feature = "serde")]
impl serde::Serialize for TotalRates {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;

        /// `{NAME: rate, ...}`.
        struct Named<'a>(&'a [f64]);
        impl serde::Serialize for Named<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_map(outcome::NAMES.iter().zip(self.0))
            }
        }

        let mut map = s.serialize_map(Some(5))?;
        map.serialize_entry("packets_per_s", &self.packets_per_s)?;
        map.serialize_entry("bits_per_s", &self.bits_per_s)?;
        map.serialize_entry("outcomes_per_s", &Named(&self.outcomes_per_s))?;
        map.serialize_entry("redirected_per_s", &self.redirected_per_s)?;
        map.serialize_entry("fallback_per_s", &self.fallback_per_s)?;
        map.end()
    }
}

/// Rates over one interval; as JSON `{"seconds", "ports": [...], "totals": {...}, "rates":
/// {...}}`.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Rates {
    /// The interval measured between the two readings (monotonic clock), in seconds.
    pub seconds: f64,
    /// Every port of the later reading (traffic or a binding), the fastest first (packets per
    /// second, then packets since load, then protocol and port).
    pub ports: Vec<PortRate>,
    /// The totals of the later reading.
    pub totals: Totals,
    /// Their rates.
    pub rates: TotalRates,
}

/// What a counter counted between `before` and `after`: their difference, or `after` when it
/// went down (a reset: it counted `after` since).
#[must_use]
pub const fn delta(before: u64, after: u64) -> u64 {
    if after >= before {
        after - before
    } else {
        after
    }
}

/// `count` per second over `seconds` (0 for an empty interval).
#[expect(
    clippy::cast_precision_loss,
    reason = "a rate: 2^52 frames in one interval is out of reach"
)]
fn per_s(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

impl Rates {
    /// The rates between two readings `seconds` apart (measured with a monotonic clock).
    #[must_use]
    pub fn between(before: &Stats, after: &Stats, seconds: f64) -> Self {
        let previous = |p: &PortStat| before.port(p.proto, p.port);
        let mut ports: Vec<PortRate> = after
            .ports
            .iter()
            .map(|p| {
                let old = previous(p);
                // Packets and bytes reset together; take the packets' word for both.
                let reset = p.packets < old.packets;
                let new_packets = if reset {
                    p.packets
                } else {
                    p.packets - old.packets
                };
                let new_bytes = if reset {
                    p.bytes
                } else {
                    delta(old.bytes, p.bytes)
                };
                PortRate {
                    proto: p.proto,
                    port: p.port,
                    action: p.action.clone(),
                    packets: p.packets,
                    bytes: p.bytes,
                    new_packets,
                    new_bytes,
                    packets_per_s: per_s(new_packets, seconds),
                    bits_per_s: per_s(new_bytes.saturating_mul(8), seconds),
                }
            })
            .collect();
        ports.sort_by(|a, b| {
            b.packets_per_s
                .total_cmp(&a.packets_per_s)
                .then(b.packets.cmp(&a.packets))
                .then((a.proto, a.port).cmp(&(b.proto, b.port)))
        });
        let (t0, t1) = (&before.totals, &after.totals);
        let mut outcomes_per_s = [0.0; outcome::COUNT];
        for (rate, (old, new)) in outcomes_per_s
            .iter_mut()
            .zip(t0.outcomes.iter().zip(&t1.outcomes))
        {
            *rate = per_s(delta(*old, *new), seconds);
        }
        Self {
            seconds,
            ports,
            totals: *t1,
            rates: TotalRates {
                packets_per_s: per_s(delta(t0.packets, t1.packets), seconds),
                bits_per_s: per_s(
                    delta(t0.demuxed_bytes, t1.demuxed_bytes).saturating_mul(8),
                    seconds,
                ),
                outcomes_per_s,
                redirected_per_s: per_s(delta(t0.redirected, t1.redirected), seconds),
                fallback_per_s: per_s(delta(t0.redirect_fallback, t1.redirect_fallback), seconds),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(ports: &[(u16, u64)], not_ip: u64) -> Stats {
        let mut totals = Totals::default();
        totals.outcomes[outcome::NOT_IP] = not_ip;
        Stats {
            ports: ports
                .iter()
                .map(|&(port, packets)| PortStat {
                    proto: Proto::Udp,
                    port,
                    packets,
                    bytes: packets * 100,
                    action: None,
                    dst: None,
                })
                .collect(),
            scoped: Vec::new(),
            totals,
        }
    }

    #[test]
    fn deltas_over_the_measured_time_fastest_first() {
        let before = stats(&[(1, 1000), (2, 10)], 4);
        let after = stats(&[(1, 1010), (2, 50), (3, 5)], 8);
        let rates = Rates::between(&before, &after, 2.0);
        let got: Vec<_> = rates
            .ports
            .iter()
            .map(|p| (p.port, p.new_packets, p.packets_per_s, p.bits_per_s))
            .collect();
        assert_eq!(
            got,
            [
                (2, 40, 20.0, 40.0 * 100.0 * 8.0 / 2.0),
                (1, 10, 5.0, 10.0 * 100.0 * 8.0 / 2.0),
                (3, 5, 2.5, 5.0 * 100.0 * 8.0 / 2.0)
            ]
        );
        assert!((rates.rates.outcomes_per_s[outcome::NOT_IP] - 2.0).abs() < f64::EPSILON);
    }

    #[test]
    fn a_counter_that_went_down_was_reset() {
        let rates = Rates::between(&stats(&[(1, 1000)], 9), &stats(&[(1, 30)], 1), 1.0);
        assert_eq!(
            (rates.ports[0].new_packets, rates.ports[0].new_bytes),
            (30, 3000)
        );
        assert!((rates.rates.outcomes_per_s[outcome::NOT_IP] - 1.0).abs() < f64::EPSILON);
    }
}
