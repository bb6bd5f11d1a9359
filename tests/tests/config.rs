//! Property tests of the config parser (`wslnet_agent::config::Config::parse`): no input makes it
//! panic; a value it accepts is one the running agent can use (every bound holds), and writing
//! an accepted config back out reads in as the same config. Needs no root and no kernel.

use rand::{Rng as _, SeedableRng as _, rngs::StdRng, seq::SliceRandom as _};
use wslnet_agent::config::{
    AttachMode, Clamp, Config, MAX_RECHECK_INTERVAL_SECS, MAX_STALL_AFTER_MS,
};

/// A config with every field set: the seed of the mutations.
const FULL: &str = r#"
interfaces = ["eth0", "zt*"]
targets = ["10.1.2.3", "fd00::1"]
metrics_addr = "127.0.0.1:9786"
pin_dir = "/sys/fs/bpf/wslnet"
attach_mode = "auto"
keep_attached_on_exit = false
datapath_log = "off"
reflect = true
reflect_per_sec = 10
set_dscp = 0
[[clamp]]
cidr = "10.8.0.0/16"
mtu = 1372
[probe]
learn = true
recheck_interval_secs = 600
max_destinations = 1024
searches_per_minute = 60
max_probes_per_sec = 200
tcp_port = 443
tcp_check = true
min_mtu_v4 = 552
first_contact_mtu = 1280
stall_after_ms = 3000
"#;

/// Values that sit on and around the bounds, and at the ends of their types.
const NUMBERS: [&str; 14] = [
    "0",
    "1",
    "-1",
    "67",
    "552",
    "1279",
    "1280",
    "65535",
    "65536",
    "604800",
    "604801",
    "3600000",
    "4294967296",
    "18446744073709551615",
];

/// What the running agent relies on in an accepted config.
fn assert_usable(c: &Config, text: &str) {
    let p = &c.probe;
    assert!(!c.interfaces.is_empty(), "{text}");
    assert!(
        (1..=MAX_RECHECK_INTERVAL_SECS).contains(&p.recheck_interval_secs),
        "{text}"
    );
    assert!(p.stall_after_ms <= MAX_STALL_AFTER_MS, "{text}");
    assert!(
        p.max_probes_per_sec >= 1 && c.reflect_per_sec >= 1,
        "{text}"
    );
    assert!(p.min_mtu_v4 >= 552, "{text}");
    assert!(
        p.first_contact_mtu == 0 || p.first_contact_mtu >= 1280,
        "{text}"
    );
    assert_ne!(p.tcp_port, Some(0), "{text}");
    assert!(c.set_dscp.is_none_or(|d| d <= 63), "{text}");
    for Clamp { cidr, mtu } in &c.clamp {
        let min = if cidr.addr().is_ipv4() { 552 } else { 1280 };
        assert!(*mtu >= min, "{text}");
    }
}

/// Parses `text`; if accepted, checks it and that it reads back the same once written out.
fn check(text: &str) {
    let Ok(c) = Config::parse(text) else {
        return;
    };
    assert_usable(&c, text);
    let written = toml::to_string(&c).unwrap();
    assert_eq!(Config::parse(&written).as_ref().ok(), Some(&c), "{written}");
}

#[test]
fn no_line_edit_of_a_full_config_makes_the_parser_panic_or_accept_an_unusable_value() {
    let lines: Vec<&str> = FULL.lines().collect();
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..20_000 {
        let mut edited: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        for _ in 0..rng.gen_range(1..=3) {
            let i = rng.gen_range(0..edited.len());
            match rng.gen_range(0..4) {
                // A value replaced by a number from the edges.
                0 | 1 => {
                    if let Some((key, _)) = edited[i].split_once(" = ") {
                        edited[i] = format!("{key} = {}", NUMBERS.choose(&mut rng).unwrap());
                    }
                }
                // A line dropped or repeated.
                2 => {
                    edited.remove(i);
                }
                _ => {
                    let line = edited[i].clone();
                    edited.insert(i, line);
                }
            }
        }
        check(&edited.join("\n"));
    }
}

#[test]
fn no_byte_edit_of_a_full_config_makes_the_parser_panic() {
    let mut rng = StdRng::seed_from_u64(11);
    let bytes = FULL.as_bytes();
    for _ in 0..20_000 {
        let mut b = bytes.to_vec();
        for _ in 0..rng.gen_range(1..=4) {
            let i = rng.gen_range(0..b.len());
            match rng.gen_range(0..3) {
                0 => b[i] = rng.r#gen(),
                1 => {
                    b.remove(i);
                }
                _ => b.insert(i, *b"\"[]=#.\n0x".choose(&mut rng).unwrap()),
            }
        }
        check(&String::from_utf8_lossy(&b));
    }
}

#[test]
fn every_attach_mode_and_a_full_config_read_back_as_written() {
    check(FULL);
    let c = Config::parse(FULL).unwrap();
    for mode in [AttachMode::Auto, AttachMode::Tcx, AttachMode::Clsact] {
        let mut m = c.clone();
        m.attach_mode = mode;
        let text = toml::to_string(&m).unwrap();
        assert_eq!(Config::parse(&text).unwrap(), m);
    }
}
