//! `/proc/<pid>/stat` start-time parsing (the unix workload attestor's PID-reuse guard). The
//! command name is chosen by the workload (any bytes but NUL, including spaces and `)`), so it
//! is attacker input. First byte even: arbitrary text, no panic. Odd: a stat line built the way
//! the kernel writes it around a fuzzed command name and start time, which must come back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use writ_agent::internal::parse_start_ticks;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        if let Ok(s) = std::str::from_utf8(rest) {
            let _ = parse_start_ticks(s);
        }
        return;
    }
    if rest.len() < 8 {
        return;
    }
    let start = u64::from_le_bytes(rest[..8].try_into().expect("8 bytes"));
    let comm = String::from_utf8_lossy(&rest[8..]).replace('\0', "");
    // Fields 3..=21 (state and 18 numbers), field 22 starttime, then the rest of the line.
    let mut line = format!("4242 ({comm}) S");
    for f in 4..=21 {
        line.push_str(&format!(" {f}"));
    }
    line.push_str(&format!(
        " {start} 1234 567 18446744073709551615 0 0 0 0 0 0 0\n"
    ));
    assert_eq!(parse_start_ticks(&line), Some(start), "{line:?}");
});
