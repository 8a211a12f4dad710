//! Address prefixes of scoped bindings and the interval tables the data path searches.
//!
//! A scoped port's prefixes of one family cut that family's address space into disjoint
//! intervals, each mapped to the most specific prefix covering it (or to none); the data path
//! binary-searches the interval starts. [`intervals`] builds that partition; [`Tables`] lays
//! out the tables of many ports in the `SCOPES`/`SCOPE_V4`/`SCOPE_V6` arrays.

use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;
use port_demux_common::{
    PortScope, ScopeV4, ScopeV6, ScopedBinding, family, model::ScopedRule, target,
};

use crate::{Error, Result};

/// Parses a `--dst` prefix: `ADDR/LEN` or a single address (a /32 or /128). A prefix with host
/// bits set is refused, naming the prefix that was probably meant.
///
/// # Errors
/// [`Error::BadSpec`] with the reason.
pub fn parse_prefix(s: &str) -> Result<IpNet> {
    if let Ok(addr) = s.parse::<IpAddr>() {
        return checked_family(s, IpNet::from(addr));
    }
    if let Some((addr, len)) = s.split_once('/')
        && let (Ok(addr), Ok(len)) = (addr.parse::<IpAddr>(), len.parse::<u8>())
    {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(Error::BadSpec(format!(
                "{s}: an {} prefix is at most /{max}",
                if addr.is_ipv4() { "IPv4" } else { "IPv6" }
            )));
        }
    }
    let net: IpNet = s.parse().map_err(|_| {
        Error::BadSpec(format!(
            "{s:?} is not an address prefix: write ADDR/LEN (192.0.2.0/24, 2001:db8::/32) or one address"
        ))
    })?;
    if net.trunc() != net {
        return Err(Error::BadSpec(format!(
            "{s} has host bits set: did you mean {}?",
            net.trunc()
        )));
    }
    checked_family(s, net)
}

/// Refuses IPv4-mapped IPv6 prefixes (`::ffff:0:0/96` and inside it): IPv4 frames carry IPv4
/// destinations, and an IPv6 frame never carries a mapped one, so such a binding would match
/// nothing.
fn checked_family(s: &str, net: IpNet) -> Result<IpNet> {
    if let IpNet::V6(n) = net
        && n.prefix_len() >= 96
        && let Some(v4) = n.addr().to_ipv4_mapped()
    {
        return Err(Error::BadSpec(format!(
            "{s} is an IPv4-mapped IPv6 prefix, which no frame carries as its destination: write the IPv4 prefix {v4}/{}",
            n.prefix_len() - 96
        )));
    }
    Ok(net)
}

/// `(family, address as a number, prefix length)` of a prefix.
#[must_use]
pub fn prefix_key(net: &IpNet) -> (u8, u128, u8) {
    match net {
        IpNet::V4(n) => (
            family::IPV4,
            u128::from(u32::from(n.addr())),
            n.prefix_len(),
        ),
        IpNet::V6(n) => (family::IPV6, u128::from(n.addr()), n.prefix_len()),
    }
}

/// The prefix recorded in a `SCOPED` entry.
///
/// # Panics
/// Never: the length is clamped to the family's.
#[must_use]
pub fn prefix_of(b: &ScopedBinding) -> IpNet {
    if b.family == family::IPV4 {
        let a = [b.addr[0], b.addr[1], b.addr[2], b.addr[3]];
        IpNet::new(IpAddr::from(a), b.len.min(32)).expect("length checked")
    } else {
        IpNet::new(IpAddr::from(b.addr), b.len.min(128)).expect("length checked")
    }
}

/// The address bytes of a prefix as `SCOPED` records them (IPv4 in the first 4).
#[must_use]
pub fn addr_bytes(net: &IpNet) -> [u8; 16] {
    let mut out = [0u8; 16];
    match net {
        IpNet::V4(n) => out[..4].copy_from_slice(&n.addr().octets()),
        IpNet::V6(n) => out = n.addr().octets(),
    }
    out
}

/// The model's view of a `SCOPED` entry with id `id`.
#[must_use]
pub fn rule_of(id: u32, b: &ScopedBinding) -> ScopedRule {
    let (family, addr, len) = prefix_key(&prefix_of(b));
    ScopedRule {
        index: b.index,
        family,
        addr,
        len,
        action: b.action,
        slot: b.slot,
        id,
    }
}

/// The partition of an address space of `bits` bits (32 or 128) by `prefixes` (address as a
/// number with host bits zero, length, target), as sorted `(start, target)` pairs: the first
/// starts at 0, each runs to the next one's start, and its target is the most specific
/// prefix's covering it (0 where none does). Prefixes are nested or disjoint, so one sweep with
/// a stack of the prefixes open at each point does it; a prefix given twice keeps its last
/// target.
///
/// # Panics
/// Never: the output always holds the interval from 0.
#[must_use]
pub fn intervals(prefixes: &[(u128, u8, u32)], bits: u32) -> Vec<(u128, u32)> {
    let last = |addr: u128, len: u8| -> u128 {
        let host = bits - u32::from(len);
        let max = if bits == 128 {
            u128::MAX
        } else {
            (1 << bits) - 1
        };
        if host == 128 {
            max
        } else {
            addr | ((1u128 << host) - 1)
        }
    };
    // Sorted by start, then outer before inner; duplicates: the last one given.
    let mut sorted: BTreeMap<(u128, u8), u32> = BTreeMap::new();
    for &(addr, len, t) in prefixes {
        sorted.insert((addr, len), t);
    }
    let mut out: Vec<(u128, u32)> = vec![(0, 0)];
    let push = |out: &mut Vec<(u128, u32)>, start: u128, t: u32| {
        let top = out.last_mut().expect("never empty");
        if top.0 == start {
            top.1 = t;
        } else if top.1 != t {
            out.push((start, t));
        }
    };
    // (last address, target) of the prefixes open at the sweep's point, innermost on top.
    let mut open: Vec<(u128, u32)> = Vec::new();
    for (&(addr, len), &t) in &sorted {
        while let Some(&(end, _)) = open.last() {
            if end >= addr {
                break;
            }
            open.pop();
            push(&mut out, end + 1, open.last().map_or(0, |o| o.1));
        }
        open.push((last(addr, len), t));
        push(&mut out, addr, t);
    }
    while let Some((end, _)) = open.pop() {
        if end == last(0, 0) {
            break;
        }
        push(&mut out, end + 1, open.last().map_or(0, |o| o.1));
    }
    out
}

/// One port's tables: its IPv4 and IPv6 interval records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortTables {
    /// IPv4 records (empty: no IPv4 prefix).
    pub v4: Vec<ScopeV4>,
    /// IPv6 records (empty: no IPv6 prefix).
    pub v6: Vec<ScopeV6>,
}

impl PortTables {
    /// The tables of one port's `rules` (all of that port).
    ///
    /// # Panics
    /// Never: an IPv4 rule's address fits in 32 bits.
    #[must_use]
    pub fn build(rules: &[ScopedRule]) -> Self {
        let of = |fam: u8| -> Vec<(u128, u8, u32)> {
            rules
                .iter()
                .filter(|r| r.family == fam)
                .map(|r| (r.addr, r.len, target(r.id, r.action, r.slot)))
                .collect()
        };
        let (v4, v6) = (of(family::IPV4), of(family::IPV6));
        Self {
            v4: if v4.is_empty() {
                Vec::new()
            } else {
                intervals(&v4, 32)
                    .into_iter()
                    .map(|(start, target)| ScopeV4 {
                        start: u32::try_from(start).expect("an IPv4 address"),
                        target,
                    })
                    .collect()
            },
            v6: if v6.is_empty() {
                Vec::new()
            } else {
                intervals(&v6, 128)
                    .into_iter()
                    .map(|(start, target)| ScopeV6 {
                        hi: (start >> 64) as u64,
                        #[expect(clippy::cast_possible_truncation, reason = "the low half")]
                        lo: start as u64,
                        target,
                        pad: 0,
                    })
                    .collect()
            },
        }
    }
}

/// Every scoped port's tables laid out one after the other from record 0: what a fresh
/// instance (or a test harness) writes.
#[derive(Clone, Debug, Default)]
pub struct Tables {
    /// `(port index, SCOPES value)`.
    pub scopes: Vec<(u32, PortScope)>,
    /// `SCOPE_V4` from record 0.
    pub v4: Vec<ScopeV4>,
    /// `SCOPE_V6` from record 0.
    pub v6: Vec<ScopeV6>,
}

impl Tables {
    /// The tables of `rules`, port by port.
    #[must_use]
    pub fn build(rules: &[ScopedRule]) -> Self {
        let mut by_port: BTreeMap<u32, Vec<ScopedRule>> = BTreeMap::new();
        for r in rules {
            by_port.entry(r.index).or_default().push(*r);
        }
        let mut out = Self::default();
        for (index, rules) in by_port {
            let t = PortTables::build(&rules);
            let place = |len: usize, at: usize| {
                if len == 0 {
                    0
                } else {
                    PortScope::pack(to_u32(at), to_u32(len))
                }
            };
            let scope = PortScope {
                v4: place(t.v4.len(), out.v4.len()),
                v6: place(t.v6.len(), out.v6.len()),
            };
            out.v4.extend(t.v4);
            out.v6.extend(t.v6);
            out.scopes.push((index, scope));
        }
        out
    }
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).expect("tables are far below 2^32 records")
}

#[cfg(test)]
mod tests {
    use port_demux_common::model::most_specific;

    use super::*;

    /// A tiny deterministic generator (xorshift).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn lookup(records: &[(u128, u32)], addr: u128) -> u32 {
        let i = records.partition_point(|r| r.0 <= addr) - 1;
        records[i].1
    }

    #[test]
    fn intervals_give_the_most_specific_prefix() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for bits in [32u32, 128] {
            let fam = if bits == 32 {
                family::IPV4
            } else {
                family::IPV6
            };
            for round in 0..200 {
                // Few distinct high bits, so that prefixes nest and overlap.
                let base = |rng: &mut Rng| -> u128 {
                    let r = u128::from(rng.next() & 0x7) << (bits - 3) | u128::from(rng.next());
                    r & if bits == 32 { 0xffff_ffff } else { u128::MAX }
                };
                let rules: Vec<ScopedRule> = (0..=(round % 12))
                    .map(|id| {
                        #[expect(clippy::cast_possible_truncation, reason = "below 129")]
                        let len = (rng.next() % u64::from(bits + 1)) as u8;
                        let host = bits - u32::from(len);
                        let a = base(&mut rng);
                        let addr = if host == 128 { 0 } else { a >> host << host };
                        ScopedRule {
                            index: 1,
                            family: fam,
                            addr,
                            len,
                            action: 2,
                            slot: 0,
                            id,
                        }
                    })
                    .collect();
                // Duplicates: the model keeps the first, `intervals` the last.
                let mut seen = std::collections::HashSet::new();
                let rules: Vec<ScopedRule> = rules
                    .into_iter()
                    .filter(|r| seen.insert((r.addr, r.len)))
                    .collect();
                let t = PortTables::build(&rules);
                let records: Vec<(u128, u32)> = if bits == 32 {
                    t.v4.iter()
                        .map(|r| (u128::from(r.start), r.target))
                        .collect()
                } else {
                    t.v6.iter()
                        .map(|r| (u128::from(r.hi) << 64 | u128::from(r.lo), r.target))
                        .collect()
                };
                assert!(records.windows(2).all(|w| w[0].0 < w[1].0));
                assert!(records.len() <= 2 * rules.len() + 1);
                let mut probes: Vec<u128> =
                    vec![0, if bits == 32 { 0xffff_ffff } else { u128::MAX }];
                for r in &rules {
                    let host = bits - u32::from(r.len);
                    let last = if host == 128 {
                        u128::MAX
                    } else {
                        r.addr | ((1 << host) - 1)
                    };
                    probes.extend([r.addr, last, r.addr.wrapping_sub(1), last.wrapping_add(1)]);
                }
                for _ in 0..50 {
                    probes.push(base(&mut rng));
                }
                for p in probes {
                    if bits == 32 && p > 0xffff_ffff {
                        continue;
                    }
                    let want = most_specific(&rules, 1, fam, p)
                        .map_or(0, |r| target(r.id, r.action, r.slot));
                    assert_eq!(lookup(&records, p), want, "address {p:#x} in {rules:?}");
                }
            }
        }
    }

    #[test]
    fn prefixes_parse_or_say_what_was_meant() {
        assert_eq!(
            parse_prefix("192.0.2.1").unwrap().to_string(),
            "192.0.2.1/32"
        );
        assert_eq!(
            parse_prefix("2001:db8::/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        assert_eq!(parse_prefix("::/0").unwrap().to_string(), "::/0");
        let e = parse_prefix("192.0.2.1/24").unwrap_err().to_string();
        assert!(e.contains("did you mean 192.0.2.0/24?"), "{e}");
        let e = parse_prefix("192.0.2.0/33").unwrap_err().to_string();
        assert!(e.contains("at most /32"), "{e}");
        let e = parse_prefix("::ffff:192.0.2.0/120")
            .unwrap_err()
            .to_string();
        assert!(e.contains("write the IPv4 prefix 192.0.2.0/24"), "{e}");
        assert!(parse_prefix("banana").is_err());
    }
}
