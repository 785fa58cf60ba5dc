//! AFL++ target: arbitrary bytes into the sans-I/O device (see
//! `hil_session::fuzzing::drive` for the input format).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        hil_session::fuzzing::drive(data);
    });
}
