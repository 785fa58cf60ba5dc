fn main() {
    std::process::exit(hil_sim::main_with_args(std::env::args_os()));
}
