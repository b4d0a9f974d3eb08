//! Port forwards (`[HOSTADDR:]HOSTPORT:GUESTPORT[/tcp|/udp]`), readiness checks and guest
//! paths: parsed or refused, never a panic; a forward's text form parses back into it.
#![no_main]

use kiln_recipe::{hidden_by_mount, PortForward, Ready};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match s.parse::<PortForward>() {
        Ok(p) => {
            let again: PortForward = p.to_string().parse().expect("a forward's text parses");
            assert_eq!(again, p);
        }
        Err(m) => assert!(m.contains("port forward"), "{m}"),
    }
    if let Ok(r) = s.parse::<Ready>() {
        assert_eq!(r.as_conf().parse::<Ready>(), Ok(r));
    }
    let _ = hidden_by_mount(s);
});
