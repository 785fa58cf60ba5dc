fn main() {
    // esp-hal's linker script (the esp-generate template's convention).
    println!("cargo:rustc-link-arg=-Tlinkall.x");
}
