//! The Internet checksum (RFC 1071) of the packets the agent builds itself: ICMP echo probes on
//! raw sockets and the ICMP errors it reflects.

/// The checksum of `data` (whose checksum field is 0): the one's complement of the one's-
/// complement sum of its big-endian 16-bit words, an odd last byte padded with 0.
pub fn internet(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let (pairs, rest) = data.as_chunks::<2>();
    for c in pairs {
        sum += u32::from(u16::from_be_bytes(*c));
    }
    if let [b] = rest {
        sum += u32::from(*b) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::internet;

    #[test]
    fn checksum_of_a_known_echo_request() {
        // type 8, code 0, id 0x1234, seq 1, payload "abcd"
        let mut p = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1, b'a', b'b', b'c', b'd'];
        let c = internet(&p);
        p[2..4].copy_from_slice(&c.to_be_bytes());
        assert_eq!(internet(&p), 0);
    }
}
