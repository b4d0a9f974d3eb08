//! Parsing of `/proc/net/tcp` and `/proc/net/tcp6` for the `ready=tcp:PORT`
//! check: is there a socket in LISTEN state (`st` = `0A`) on a given local port?

/// The `st` value of a listening socket.
const TCP_LISTEN: &str = "0A";

/// Whether the table text (either file's format) has a LISTEN socket on `port`.
pub fn has_listener(table: &str, port: u16) -> bool {
    table.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace();
        let (Some(_sl), Some(local), Some(_remote), Some(st)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return false;
        };
        st.eq_ignore_ascii_case(TCP_LISTEN)
            && local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                == Some(port)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1234 1 0000000000000000 100 0 0 10 0
   1: 0F02000A:0016 0202000A:C350 01 00000000:00000000 00:00000000 00000000     0        0 1235 1 0000000000000000 20 4 30 10 -1
";

    const TCP6: &str = "\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4321 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn finds_ipv4_listener() {
        assert!(has_listener(TCP, 80));
        // Port 22 is only an established connection, not a listener.
        assert!(!has_listener(TCP, 22));
        assert!(!has_listener(TCP, 8080));
    }

    #[test]
    fn finds_ipv6_listener() {
        assert!(has_listener(TCP6, 8080));
        assert!(!has_listener(TCP6, 80));
    }

    #[test]
    fn tolerates_garbage() {
        assert!(!has_listener("", 80));
        assert!(!has_listener("header only\n", 80));
        assert!(!has_listener("h\n 0: zz:zz 0 0A\n short\n", 80));
    }
}
