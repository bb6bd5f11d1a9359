//! Protocol numbers and header layouts: the wire facts that the datapath, the reference model
//! and the test packet builders all read packets by.
//!
//! Facts, not logic: each constant is a number from an RFC or IEEE standard (named as in Linux's
//! uapi headers where it has a name there), kept in one place so that the parsers cannot
//! disagree on them. How a header is parsed stays with each parser; the reference model keeps
//! its own logic so that it remains an independent oracle.

/// Ethernet header length, bytes: destination MAC, source MAC, EtherType.
pub const ETH_HLEN: usize = 14;
/// 802.1Q tag length, bytes: TPID (the tag's EtherType) and TCI, followed by the real
/// EtherType.
pub const VLAN_HLEN: usize = 4;

/// EtherType of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType of ARP.
pub const ETH_P_ARP: u16 = 0x0806;
/// EtherType of an 802.1Q VLAN tag.
pub const ETH_P_8021Q: u16 = 0x8100;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;

/// IPv4 header length without options (IHL 5), bytes.
pub const IPV4_HDR_LEN: usize = 20;
/// Fixed IPv6 header length (without extension headers), bytes.
pub const IPV6_HDR_LEN: usize = 40;

/// IPv6 next header: hop-by-hop options (RFC 8200).
pub const IPPROTO_HOPOPTS: u8 = 0;
/// IP protocol: ICMP.
pub const IPPROTO_ICMP: u8 = 1;
/// IP protocol: TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol: UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IPv6 next header: routing header (RFC 8200).
pub const IPPROTO_ROUTING: u8 = 43;
/// IPv6 next header: fragment header (RFC 8200).
pub const IPPROTO_FRAGMENT: u8 = 44;
/// IP protocol: ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;
/// IPv6 next header: no next header (RFC 8200).
pub const IPPROTO_NONE: u8 = 59;
/// IPv6 next header: destination options (RFC 8200).
pub const IPPROTO_DSTOPTS: u8 = 60;

/// TCP header length without options (data offset 5), bytes.
pub const TCP_HDR_LEN: usize = 20;
/// Most bytes of TCP options: the 4-bit data offset allows a 60-byte header.
pub const TCP_MAX_OPTION_BYTES: usize = 40;
/// Offset of the destination port inside the TCP header.
pub const TCP_DPORT_OFFSET: usize = 2;
/// Offset of the sequence number inside the TCP header.
pub const TCP_SEQ_OFFSET: usize = 4;
/// Offset of the checksum inside the TCP header.
pub const TCP_CHECK_OFFSET: usize = 16;

/// TCP flag bits (byte 13 of the TCP header).
pub mod tcp_flags {
    /// FIN: no more data from the sender.
    pub const FIN: u8 = 0x01;
    /// SYN: synchronise sequence numbers (the handshake's first two segments).
    pub const SYN: u8 = 0x02;
    /// RST: reset the connection.
    pub const RST: u8 = 0x04;
    /// PSH: push the data to the application.
    pub const PSH: u8 = 0x08;
    /// ACK: the acknowledgment number is valid (every segment but the first SYN).
    pub const ACK: u8 = 0x10;
}

/// TCP option kind: end of the option list.
pub const TCPOPT_EOL: u8 = 0;
/// TCP option kind: no-operation (one byte of padding).
pub const TCPOPT_NOP: u8 = 1;
/// TCP option kind: maximum segment size.
pub const TCPOPT_MSS: u8 = 2;
/// Length of the MSS option, bytes: kind, length, 16-bit value.
pub const TCPOLEN_MSS: u8 = 4;
